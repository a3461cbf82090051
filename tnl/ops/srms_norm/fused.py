"""SimpleRMSNorm pieces: Triton row kernels on a CUDA GPU in eager mode, PyTorch formulas otherwise.

Under torch.compile the PyTorch formulas are used, since Inductor fuses them with their neighbours (a residual
add, a cast), which an opaque kernel would prevent. The kernels cover rows of up to 16,384 elements.

Every function takes `backend`, the caller's choice (the model config's `norm_backend`): "auto" runs the kernels
where they apply, "triton" too but fails where Triton cannot run at all, "torch" always runs the formulas."""

from __future__ import annotations

import torch

from ..common import accumulation_dtype, triton_usable

NORM_BACKENDS = ("auto", "triton", "torch")
_MAX_ROW = 16384


def _use_triton(x: torch.Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend not in NORM_BACKENDS:
        raise ValueError(f"srms_norm: backend must be one of {', '.join(NORM_BACKENDS)}, got {backend!r}")
    if x.dtype == torch.float64 or x.shape[-1] > _MAX_ROW or torch.compiler.is_compiling():
        return False
    if triton_usable(x):
        return True
    if backend == "triton":
        raise ValueError(f"srms_norm: backend='triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1), got "
                         f"a {x.device.type} tensor; use backend='auto' or 'torch'")
    return False


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[..., d] as a 2-D view with unit stride in the last dim (copies only if it has to)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _block(d: int) -> tuple[int, int]:
    block = 1 << max(0, d - 1).bit_length()  # next power of two
    return block, min(16, max(1, block // 256))  # (BLOCK, num_warps)


def norm_forward(x: torch.Tensor, eps: float, out_dtype: torch.dtype, *,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """y = x r in `out_dtype` and r = (mean(x^2) + eps)^-1/2 (fp32, shape [..., 1])."""
    if _use_triton(x, backend):
        from .triton_kernels import _norm_fwd_kernel

        x2 = _rows(x)
        y = torch.empty(x2.shape, device=x.device, dtype=out_dtype)
        r = torch.empty(x2.shape[0], device=x.device, dtype=torch.float32)
        block, warps = _block(x2.shape[1])
        _norm_fwd_kernel[(x2.shape[0],)](x2, y, r, x2.stride(0), y.stride(0), x2.shape[1], eps, BLOCK=block,
                                         num_warps=warps)
        return y.view(x.shape), r.view(*x.shape[:-1], 1)
    xf = x.to(accumulation_dtype(x.dtype))
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * r).to(out_dtype), r


def norm_backward(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor, out_dtype: torch.dtype, *,
                  backend: str = "auto") -> torch.Tensor:
    """dx = r (dy - y mean(dy y)) from the normalised output y and r alone."""
    if _use_triton(y, backend):
        from .triton_kernels import _norm_bwd_kernel

        dy2, y2 = _rows(dy), _rows(y)
        dx = torch.empty(y2.shape, device=y.device, dtype=out_dtype)
        block, warps = _block(y2.shape[1])
        _norm_bwd_kernel[(y2.shape[0],)](dy2, y2, r.reshape(-1).contiguous(), dx, dy2.stride(0), y2.stride(0),
                                         dx.stride(0), y2.shape[1], BLOCK=block, num_warps=warps)
        return dx.view(y.shape)
    acc = r.dtype
    dn, n = dy.to(acc), y.to(acc)
    return (r * (dn - n * (dn * n).mean(-1, keepdim=True))).to(out_dtype)


def gated_norm_forward(o: torch.Tensor, u: torch.Tensor, eps: float, *,
                       backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """u * (o r), product in fp32, one rounding to the promoted dtype of o and u; and r ([..., 1], fp32)."""
    out_dtype = torch.promote_types(o.dtype, u.dtype)
    if _use_triton(o, backend) and o.shape == u.shape:
        from .triton_kernels import _gated_fwd_kernel

        o2, u2 = _rows(o), _rows(u)
        y = torch.empty(o2.shape, device=o.device, dtype=out_dtype)
        r = torch.empty(o2.shape[0], device=o.device, dtype=torch.float32)
        block, warps = _block(o2.shape[1])
        _gated_fwd_kernel[(o2.shape[0],)](o2, u2, y, r, o2.stride(0), u2.stride(0), y.stride(0), o2.shape[1], eps,
                                          BLOCK=block, num_warps=warps)
        return y.view(o.shape), r.view(*o.shape[:-1], 1)
    of = o.to(accumulation_dtype(o.dtype))
    r = torch.rsqrt(of.pow(2).mean(-1, keepdim=True) + eps)
    return (of * r * u.to(of.dtype)).to(out_dtype), r


def gated_norm_backward(dy: torch.Tensor, o: torch.Tensor, u: torch.Tensor, r: torch.Tensor,
                        du_out: torch.Tensor | None = None, with_output: bool = False, *,
                        backend: str = "auto") -> tuple[torch.Tensor, ...]:
    """Gradients of u * (o r) w.r.t. o and u, in their dtypes. `du_out`: a tensor of u's shape and dtype (any
    row stride, unit stride within rows) to write u's gradient into; it is returned as the second result.
    `with_output`: also return the forward's output (as `gated_norm_forward` rounds it), from the same reads."""
    if du_out is not None and (du_out.shape != u.shape or du_out.dtype != u.dtype or du_out.stride(-1) != 1):
        raise ValueError(f"gated_norm_backward: du_out must be {u.dtype} {tuple(u.shape)} with unit stride in the "
                         f"last dim, got {du_out.dtype} {tuple(du_out.shape)} strides {du_out.stride()}")
    if _use_triton(o, backend) and o.shape == u.shape == dy.shape:
        from .triton_kernels import _gated_bwd_kernel

        dy2, o2, u2 = _rows(dy), _rows(o), _rows(u)
        do = torch.empty(o2.shape, device=o.device, dtype=o.dtype)
        du = du_out.view(u2.shape) if du_out is not None else torch.empty(u2.shape, device=u.device, dtype=u.dtype)
        y = torch.empty(o2.shape, device=o.device, dtype=torch.promote_types(o.dtype, u.dtype)) if with_output \
            else do
        block, warps = _block(o2.shape[1])
        _gated_bwd_kernel[(o2.shape[0],)](dy2, o2, u2, r.reshape(-1).contiguous(), do, du, y, dy2.stride(0),
                                          o2.stride(0), u2.stride(0), do.stride(0), du.stride(0), y.stride(0),
                                          o2.shape[1], BLOCK=block, WRITE_Y=with_output, num_warps=warps)
        grads = (do.view(o.shape), du_out if du_out is not None else du.view(u.shape))
        return (*grads, y.view(o.shape)) if with_output else grads
    acc = r.dtype
    n = o.to(acc) * r
    dyf = dy.to(acc)
    dn = dyf * u.to(acc)
    do = r * (dn - n * (dn * n).mean(-1, keepdim=True))
    du = (dyf * n).to(u.dtype)
    grads = (do.to(o.dtype), du_out.copy_(du) if du_out is not None else du)
    if with_output:
        return (*grads, (n * u.to(acc)).to(torch.promote_types(o.dtype, u.dtype)))
    return grads
