"""The TNL token mixer after its input projection, as one custom op for torch.compile with the Triton kernels.

    out = W_o (u * SRMSNorm(lightning_attn(SiLU(q), SiLU(k), v)))   with [q | k | v | u] = qkvu

where qkvu is the packed input projection (paper eq. 5-7). Traced as separate ops, the gradient of qkvu is a
concatenation of dq, dk, dv and du that Inductor writes by copying the attention op's three outputs (the
kernels cannot write into its slices) with du's arithmetic fused in: nine bf16 activation-sized passes per block
(4.4 ms of a tnl_385m step at T=2048 on an H100). Here the attention backward kernels and the gate's backward
write straight into one d(qkvu) buffer. SiLU(q), SiLU(k) come in from the caller (Inductor computes them, and
may recompute them for backward); the kernels load them and apply SiLU' as they write dq, dk, so the gradient is
w.r.t. the raw q, k and none flows into the activated copies. As in eager mode's `_GatedNormLinear`, the gated,
normalised product (W_o's input) is formed again in backward (by the gate's backward kernel, from the same reads)
for W_o's gradient instead of being kept.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from ..ops.srms_norm import gated_norm_backward, gated_norm_forward

# "tnl" inside the package; the Hugging Face export's copy registers its own namespace (see chunk_triton.py)
_NS = "tnl" if __name__ == "tnl.model.fused_mixer" else "tnl_" + re.sub(r"\W", "_", __name__)


def _split(qkvu: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """q, k, v, u as [B, T, H, Dh] views of the packed [B, T, 4 H Dh] tensor."""
    b, t, n = qkvu.shape
    return list(qkvu.view(b, t, 4, heads, n // (4 * heads)).unbind(2))


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(-2)


@torch.library.custom_op(f"{_NS}::gated_attn_out", mutates_args=())
def _forward(qkvu: torch.Tensor, q_act: torch.Tensor, k_act: torch.Tensor, decay: torch.Tensor,
             weight: torch.Tensor, cu_seqlens: Optional[torch.Tensor], heads: int,  # noqa: UP045 (op schema)
             eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, o, r, attention start states): o and r (the norm's reciprocal RMS) and the states are for backward."""
    from ..ops.lightning_attn.chunk_triton import triton_attn_forward

    q, k, v, u = _split(qkvu, heads)
    o, starts = triton_attn_forward(q, k, v, decay, cu_seqlens=cu_seqlens, qk_activated=(q_act, k_act))
    y, r = gated_norm_forward(_flat(o), _flat(u), eps)
    with torch.autocast(qkvu.device.type, enabled=False):
        out = y @ weight.t()
    return out, o, r, starts


@_forward.register_fake
def _(qkvu, q_act, k_act, decay, weight, cu_seqlens, heads, eps):
    from ..ops.lightning_attn.chunk_triton import triton_attn_states_shape

    b, t, _ = qkvu.shape
    q, _, v, _ = _split(qkvu, heads)
    return (qkvu.new_empty(b, t, weight.shape[0]), torch.empty_like(q), qkvu.new_empty(b, t, 1, dtype=torch.float32),
            qkvu.new_empty(triton_attn_states_shape(q, v, cu_seqlens), dtype=torch.float32))


@torch.library.custom_op(f"{_NS}::gated_attn_out_bwd", mutates_args=())
def _backward_op(dout: torch.Tensor, qkvu: torch.Tensor, q_act: torch.Tensor, k_act: torch.Tensor,
                 decay: torch.Tensor, weight: torch.Tensor, o: torch.Tensor, r: torch.Tensor, starts: torch.Tensor,
                 cu_seqlens: Optional[torch.Tensor], heads: int,  # noqa: UP045 (op schema)
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(d qkvu, d weight)."""
    from ..ops.lightning_attn.chunk_triton import triton_attn_backward

    q, k, v, u = _split(qkvu, heads)
    dqkvu = torch.empty(qkvu.shape, device=qkvu.device, dtype=qkvu.dtype)
    dq, dk, dv, du = _split(dqkvu, heads)
    with torch.autocast(qkvu.device.type, enabled=False):
        d2 = dout.reshape(-1, dout.shape[-1]).to(weight.dtype)
        dy = (d2 @ weight).view(*o.shape[:2], -1)
        # the gate's backward also gives the forward's output again (same rounding), for W_o's gradient
        do, _, y = gated_norm_backward(dy, _flat(o), _flat(u), r, du_out=_flat(du), with_output=True)
        dw = d2.t() @ y.reshape(-1, y.shape[-1])
    triton_attn_backward(do.view(o.shape), q, k, v, decay, starts, cu_seqlens=cu_seqlens,
                         qk_activated=(q_act, k_act), out=(dq, dk, dv))
    return dqkvu, dw


@_backward_op.register_fake
def _(dout, qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens, heads, eps):
    return torch.empty_like(qkvu), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    qkvu, q_act, k_act, decay, weight, cu_seqlens, heads, eps = inputs
    _, o, r, starts = output
    ctx.save_for_backward(qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens)
    ctx.heads, ctx.eps = heads, eps


def _backward(ctx, dout, _do, _dr, _dstarts):
    qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens = ctx.saved_tensors
    dqkvu, dw = _backward_op(dout, qkvu, q_act, k_act, decay, weight, o, r, starts, cu_seqlens, ctx.heads, ctx.eps)
    return dqkvu, None, None, None, dw, None, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def gated_attention_output(qkvu: torch.Tensor, q_act: torch.Tensor, k_act: torch.Tensor, decay: torch.Tensor,
                           weight: torch.Tensor, heads: int, eps: float,
                           cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """W_o (u * SRMSNorm(lightning_attn(q_act, k_act, v))) for qkvu = [q | k | v | u] ([B, T, 4 H Dh]),
    q_act = SiLU(q), k_act = SiLU(k) ([B, T, H, Dh]); gradients flow to qkvu (w.r.t. the raw q, k) and weight
    ([out, H Dh], in qkvu's dtype). Triton kernels only: CUDA tensors, or the Triton interpreter."""
    b, t, n = qkvu.shape
    if n % (4 * heads) or q_act.shape != (b, t, heads, n // (4 * heads)) or k_act.shape != q_act.shape:
        raise ValueError(f"gated_attention_output: qkvu [B, T, 4 * heads * head_dim] with q_act, k_act "
                         f"[B, T, heads, head_dim]; got {tuple(qkvu.shape)}, {tuple(q_act.shape)}, "
                         f"{tuple(k_act.shape)} for {heads} heads")
    if weight.dtype != qkvu.dtype or weight.shape[1] != n // 4:
        raise ValueError(f"gated_attention_output: weight must be {qkvu.dtype} [out, {n // 4}], got "
                         f"{weight.dtype} {tuple(weight.shape)}")
    return _forward(qkvu.contiguous(), q_act, k_act, decay.detach().to(torch.float32), weight, cu_seqlens, heads,
                    float(eps))[0]
