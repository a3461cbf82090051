"""Fused linear cross-entropy: loss and gradients of `cross_entropy(hidden @ weight.T, targets)` in one pass.

Per chunk of tokens: logits = hidden_c @ W^T in the compute dtype (bf16 under autocast), one kernel turns each
row into its loss and, in place, into d loss / d logits = softmax - onehot, then d hidden_c = g @ W and
dW += g^T @ hidden_c. The backward only scales the stored gradients by the incoming one. Compared with
materialising logits (or checkpointing chunks of them): no fp32 [tokens, vocab] tensor, no second logits
matmul in the backward, and one chunk of logits alive at a time. The op is a `torch.library` custom op, so
`torch.compile` keeps it whole.
"""

from __future__ import annotations

import re

import torch

from ..common import accumulation_dtype, triton_usable

# "tnl" inside the package; a copy of this file elsewhere (the Hugging Face export) registers its own namespace,
# so both can live in one process.
_NS = "tnl" if __name__ == "tnl.ops.cross_entropy.fused" else "tnl_" + re.sub(r"\W", "_", __name__)


def _use_triton(x: torch.Tensor) -> bool:
    return x.dtype != torch.float64 and triton_usable(x)


def _rows(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, ignore_index: int, grad: bool) -> None:
    """loss[r] = lse(logits[r]) - logits[r, t_r] (0 if ignored); with `grad`, logits[r] becomes softmax - onehot."""
    if _use_triton(logits):
        from .triton_kernels import _ce_rows_kernel

        v = logits.shape[1]
        block = 4096 if v >= 4096 else max(16, 1 << (v - 1).bit_length())
        _ce_rows_kernel[(logits.shape[0],)](logits, logits.stride(0), targets, loss, v, ignore_index,
                                            BLOCK_V=block, WRITE_GRAD=grad, num_warps=8)
        return
    acc = accumulation_dtype(logits.dtype)
    x = logits.to(acc)
    lse = x.logsumexp(-1)
    ignored = targets == ignore_index
    invalid = ~ignored & ((targets < 0) | (targets >= x.shape[1]))
    safe = targets.masked_fill(ignored | invalid, 0).long()[:, None]
    loss.copy_((lse - x.gather(1, safe).squeeze(1)).masked_fill(ignored, 0.0).masked_fill(invalid, float("nan")))
    ignored = ignored | invalid
    if grad:
        g = (x - lse[:, None]).exp_()
        g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=acc))
        logits.copy_(g.masked_fill_(ignored[:, None], 0.0))


_ADDMM_OUT_DTYPE = "dtype_out" in torch.ops.aten.addmm.overloads()  # torch >= 2.8


def _add_weight_grad(dw: torch.Tensor, g: torch.Tensor, hc: torch.Tensor) -> None:
    """dw += g^T @ hc. On CUDA with bf16/fp16 operands the GEMM adds into the fp32 buffer itself (addmm with
    out_dtype): each chunk's product is not rounded to bf16 first, and no separate fp32 add re-reads dw (H100,
    tnl_385m: 4 adds of 0.27 ms per step)."""
    if _ADDMM_OUT_DTYPE and dw.is_cuda and dw.dtype == torch.float32 and g.dtype in (torch.bfloat16, torch.float16):
        torch.addmm(dw, g.t(), hc, out_dtype=torch.float32, out=dw)
    else:
        dw += g.t() @ hc


@torch.library.custom_op(f"{_NS}::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          compute_dtype: torch.dtype, chunk_size: int, ignore_index: int,
                          need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = hidden.shape[-1]
    h, t = hidden.reshape(-1, d), targets.reshape(-1)
    n = h.shape[0]
    loss = torch.empty(n, device=hidden.device, dtype=accumulation_dtype(compute_dtype))
    dh = torch.empty_like(h) if need_grad else h.new_empty(0)
    acc = accumulation_dtype(compute_dtype)
    dw = torch.zeros(weight.shape, device=weight.device, dtype=acc) if need_grad else weight.new_empty(0)
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(compute_dtype)
        for start in range(0, n, chunk_size):
            hc = h[start : start + chunk_size].to(compute_dtype)
            logits = hc @ w.t()
            _rows(logits, t[start : start + chunk_size], loss[start : start + chunk_size], ignore_index, need_grad)
            if need_grad:
                dh[start : start + chunk_size] = logits @ w
                _add_weight_grad(dw, logits, hc)
    dw = dw.to(weight.dtype) if need_grad else dw
    return loss.sum(), dh.view_as(hidden) if need_grad else dh, dw


@_linear_cross_entropy.register_fake
def _(hidden, weight, targets, compute_dtype, chunk_size, ignore_index, need_grad):
    loss = hidden.new_empty((), dtype=accumulation_dtype(compute_dtype))
    if need_grad:
        return loss, torch.empty_like(hidden), torch.empty_like(weight)
    return loss, hidden.new_empty(0), weight.new_empty(0)


def _setup_context(ctx, inputs, output) -> None:
    _, dh, dw = output
    ctx.save_for_backward(dh, dw)


def _backward(ctx, g_loss, _g_dh, _g_dw):
    dh, dw = ctx.saved_tensors
    if dh.numel() == 0 and dw.numel() == 0:
        raise RuntimeError("fused_linear_cross_entropy: backward through a loss computed without gradients; "
                           "compute it with grad enabled and hidden or weight requiring grad")
    return g_loss * dh, g_loss * dw, None, None, None, None, None


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = 8192, ignore_index: int = -100,
                               reduction: str = "mean") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets), softmax in fp32, logits in the autocast dtype (as `nn.Linear`
    under autocast gives them). hidden [..., d], weight [V, d], targets [...] (int, `ignore_index` skipped).
    `reduction`: "mean" over the non-ignored targets or "sum"."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"fused_linear_cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"fused_linear_cross_entropy: hidden [..., {hidden.shape[-1]}] needs weight [vocab, "
                         f"{hidden.shape[-1]}], got weight {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"fused_linear_cross_entropy: targets shape {tuple(targets.shape)} must be hidden's "
                         f"without the last dim, {tuple(hidden.shape[:-1])}")
    if chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    # Out-of-range targets: a one-line error when they are on the CPU (free to check); on a GPU the check would
    # stall the host every step, so there the loss comes out NaN instead (the training loop reports non-finite
    # losses; its data is in range by construction: vocab_size >= the tokenizer's).
    if targets.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= weight.shape[0]))
        if bool(bad.any()):
            raise ValueError(f"fused_linear_cross_entropy: target {targets[bad][0].item()} is outside the vocabulary "
                             f"[0, {weight.shape[0]}); fix the labels or the vocab_size")
    targets = targets.to(device=hidden.device, dtype=torch.int64)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    total, _, _ = _linear_cross_entropy(hidden, weight, targets, _compute_dtype(hidden, weight),
                                        chunk_size, ignore_index, need_grad)
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp(min=1)
