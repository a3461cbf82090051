"""The TNL token mixer after its input projection as one op (a custom op under torch.compile), Triton kernels only.

    out = W_o (u * SRMSNorm(lightning_attn(SiLU(q), SiLU(k), v)))   with [q | k | v | u] = qkvu

where qkvu is the packed input projection (paper eq. 5-7). Traced as separate ops, the gradient of qkvu is a
concatenation of dq, dk, dv and du that Inductor writes by copying the attention op's three outputs (the
kernels cannot write into its slices) with du's arithmetic fused in: nine bf16 activation-sized passes per block
(4.4 ms of a tnl_385m step at T=2048 on an H100). Here the attention backward kernels and the gate's backward
write straight into one d(qkvu) buffer (eager autograd's SplitBackward makes the same copy). With grouped k/v
heads (fewer k, v heads than q heads) the kernels' dq, dk, dv are copied into it instead. Compiled, SiLU(q),
SiLU(k) come in from the caller (Inductor computes them, and may recompute them for backward); the kernels load
them and apply SiLU' as they write dq, dk, so the gradient is w.r.t. the raw q, k and none flows into the
activated copies. Eager, the kernels apply SiLU as they load q and k. As in `_GatedNormLinear`, the gated,
normalised product (W_o's input) is formed again in backward (by the gate's backward kernel, from the same reads)
for W_o's gradient instead of being kept.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from ..ops.srms_norm import gated_norm_backward, gated_norm_forward

# "tnl" inside the package; the Hugging Face export's copy registers its own namespace (see passes.py in the ops)
_NS = "tnl" if __name__ == "tnl.model.fused_mixer" else "tnl_" + re.sub(r"\W", "_", __name__)


def _split(qkvu: torch.Tensor, heads: int, width: int) -> list[torch.Tensor]:
    """q, u as [B, T, H, Dh] and k, v as [B, T, Hkv, Dh] views of the packed [B, T, 2 (H + Hkv) Dh] tensor;
    `width` = H Dh (the output projection's input). Hkv = H (no GQA) is the [B, T, 4 H Dh] layout."""
    b, t, n = qkvu.shape
    dh = width // heads
    kv = n // 2 - width
    return [x.view(b, t, -1, dh) for x in qkvu.split((width, kv, kv, width), dim=-1)]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(-2)


def _acts(q_act: torch.Tensor | None, k_act: torch.Tensor | None) -> dict:
    """The attention kernels' SiLU arguments: the given copies, or SiLU applied as the kernels load q and k."""
    return dict(qk_activation="silu", qk_activated=(q_act, k_act) if q_act is not None else None)


def gated_linear_backward(dout: torch.Tensor, o: torch.Tensor, u: torch.Tensor, r: torch.Tensor,
                          weight: torch.Tensor, du_out: torch.Tensor | None = None,
                          norm_backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(do, du, dW) of linear(u * SRMSNorm(o), W) from o, u and the forward's r, the matmuls in W's dtype. The
    gated product (the Linear's input) is formed again by the gate's backward kernel from the reads it makes
    anyway (the forward's rounding), for dW. `du_out`: where to write du (see `gated_norm_backward`);
    `norm_backend`: the norm kernels' backend (the model config's)."""
    with torch.autocast(o.device.type, enabled=False):
        d2 = dout.reshape(-1, dout.shape[-1]).to(weight.dtype)
        dy = (d2 @ weight).view(*o.shape[:-1], weight.shape[1])
        do, du, y = gated_norm_backward(dy, o, u, r, du_out=du_out, with_output=True, backend=norm_backend)
        dw = d2.t() @ y.reshape(-1, y.shape[-1]).to(weight.dtype)
    return do, du, dw


def _forward_impl(qkvu: torch.Tensor, q_act: Optional[torch.Tensor], k_act: Optional[torch.Tensor],  # noqa: UP045
                  decay: torch.Tensor, weight: torch.Tensor, cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
                  heads: int, eps: float,
                  norm_backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, o, r, attention start states): o and r (the norm's reciprocal RMS) and the states are for backward."""
    from ..ops.lightning_attn.triton_entry import triton_attn_forward

    q, k, v, u = _split(qkvu, heads, weight.shape[1])
    o, starts = triton_attn_forward(q, k, v, decay, cu_seqlens=cu_seqlens, **_acts(q_act, k_act))
    y, r = gated_norm_forward(_flat(o), _flat(u), eps, backend=norm_backend)
    with torch.autocast(qkvu.device.type, enabled=False):
        out = y @ weight.t()
    return out, o, r, starts


def _backward_impl(dout: torch.Tensor, qkvu: torch.Tensor, q_act: Optional[torch.Tensor],  # noqa: UP045
                   k_act: Optional[torch.Tensor], decay: torch.Tensor, weight: torch.Tensor,  # noqa: UP045
                   o: torch.Tensor, r: torch.Tensor, starts: torch.Tensor,
                   cu_seqlens: Optional[torch.Tensor], heads: int,  # noqa: UP045
                   eps: float, norm_backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(d qkvu, d weight)."""
    from ..ops.lightning_attn.triton_entry import triton_attn_backward

    q, k, v, u = _split(qkvu, heads, weight.shape[1])
    dqkvu = torch.empty(qkvu.shape, device=qkvu.device, dtype=qkvu.dtype)
    dq, dk, dv, du = _split(dqkvu, heads, weight.shape[1])
    do, _, dw = gated_linear_backward(dout, _flat(o), _flat(u), r, weight, du_out=_flat(du), norm_backend=norm_backend)
    grouped = k.shape[2] != heads  # GQA: the kernels sum each group's dk, dv in fp32, then they are copied in
    grads = triton_attn_backward(do.view(o.shape), q, k, v, decay, starts, cu_seqlens=cu_seqlens,
                                 out=None if grouped else (dq, dk, dv), **_acts(q_act, k_act))
    if grouped:
        for dst, src in zip((dq, dk, dv), grads):
            dst.copy_(src)
    return dqkvu, dw


_forward = torch.library.custom_op(f"{_NS}::gated_attn_out", mutates_args=())(_forward_impl)
_backward_op = torch.library.custom_op(f"{_NS}::gated_attn_out_bwd", mutates_args=())(_backward_impl)


@_forward.register_fake
def _(qkvu, q_act, k_act, decay, weight, cu_seqlens, heads, eps, norm_backend):
    from ..ops.lightning_attn.triton_entry import triton_attn_states_shape

    b, t, _ = qkvu.shape
    q, _, v, _ = _split(qkvu, heads, weight.shape[1])
    return (qkvu.new_empty(b, t, weight.shape[0]), torch.empty_like(q), qkvu.new_empty(b, t, 1, dtype=torch.float32),
            qkvu.new_empty(triton_attn_states_shape(q, v, cu_seqlens), dtype=torch.float32))


@_backward_op.register_fake
def _(dout, qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens, heads, eps, norm_backend):
    return torch.empty_like(qkvu), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    qkvu, q_act, k_act, decay, weight, cu_seqlens, heads, eps, norm_backend = inputs
    _, o, r, starts = output
    ctx.save_for_backward(qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens)
    ctx.heads, ctx.eps, ctx.norm_backend = heads, eps, norm_backend


def _backward_with(bwd, ctx, dout):
    qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens = ctx.saved_tensors
    dqkvu, dw = bwd(dout, qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens, ctx.heads, ctx.eps,
                    ctx.norm_backend)
    return dqkvu, None, None, None, dw, None, None, None, None


def _backward(ctx, dout, _do, _dr, _dstarts):
    return _backward_with(_backward_op, ctx, dout)


_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerGatedAttnOut(torch.autograd.Function):
    """The same forward and backward for eager mode, without torch.library's per-call dispatch overhead."""

    @staticmethod
    def forward(ctx, qkvu, q_act, k_act, decay, weight, cu_seqlens, heads, eps, norm_backend):
        output = _forward_impl(qkvu, q_act, k_act, decay, weight, cu_seqlens, heads, eps, norm_backend)
        _setup_context(ctx, (qkvu, q_act, k_act, decay, weight, cu_seqlens, heads, eps, norm_backend), output)
        return output[0]

    @staticmethod
    def backward(ctx, dout):
        return _backward_with(_backward_impl, ctx, dout)


def gated_attention_output(qkvu: torch.Tensor, q_act: torch.Tensor | None, k_act: torch.Tensor | None,
                           decay: torch.Tensor, weight: torch.Tensor, heads: int, eps: float,
                           cu_seqlens: torch.Tensor | None = None, norm_backend: str = "auto",
                           kv_heads: int | None = None) -> torch.Tensor:
    """W_o (u * SRMSNorm(lightning_attn(SiLU(q), SiLU(k), v))) for qkvu = [q | k | v | u] ([B, T, 2 (H + Hkv) Dh]:
    q and u with `heads` heads, k and v with `kv_heads`, default `heads`); q_act, k_act: SiLU(q), SiLU(k)
    ([B, T, H, Dh], [B, T, Hkv, Dh]) computed by the caller, or None to have the kernels apply SiLU as they load q
    and k. Gradients flow to qkvu (w.r.t. the raw q, k) and weight ([out, H Dh], in qkvu's dtype). Triton kernels
    only: CUDA tensors, or the Triton interpreter. `norm_backend`: the gate's norm kernels' (the model config's)."""
    b, t, n = qkvu.shape
    kv_heads = heads if kv_heads is None else kv_heads
    dh = n // (2 * (heads + kv_heads))
    if kv_heads < 1 or heads % kv_heads or n != 2 * (heads + kv_heads) * dh or (q_act is None) != (k_act is None) \
            or (q_act is not None and (q_act.shape != (b, t, heads, dh) or k_act.shape != (b, t, kv_heads, dh))):
        raise ValueError(f"gated_attention_output: qkvu [B, T, 2 * (heads + kv_heads) * head_dim] with q_act, k_act "
                         f"both None or [B, T, heads or kv_heads, head_dim]; got {tuple(qkvu.shape)}, "
                         f"{None if q_act is None else tuple(q_act.shape)}, "
                         f"{None if k_act is None else tuple(k_act.shape)} for {heads} heads, {kv_heads} k/v heads")
    if weight.dtype != qkvu.dtype or weight.shape[1] != heads * dh:
        raise ValueError(f"gated_attention_output: weight must be {qkvu.dtype} [out, {heads * dh}], got "
                         f"{weight.dtype} {tuple(weight.shape)}")
    args = (qkvu.contiguous(), q_act, k_act, decay.detach().to(torch.float32), weight, cu_seqlens, heads, float(eps),
            norm_backend)
    return _forward(*args)[0] if torch.compiler.is_compiling() else _EagerGatedAttnOut.apply(*args)
