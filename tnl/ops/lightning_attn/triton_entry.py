"""Entry points of the Triton lightning attention: `triton_lightning_attn` (what `lightning_attn` runs with
backend="triton"), and the forward and backward without autograd for ops that build their own backward (the TNL
mixer's, `tnl/model/fused_mixer.py`)."""

from __future__ import annotations

import torch

from ...settings import triton_interpret
from .checks import check_qk_activation
from .passes import EagerLightningAttn, bwd_core, fwd_impl, fwd_op, kept_starts_shape

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_DIM = 256


def _fail(msg: str) -> None:
    raise ValueError(f"lightning_attn(triton): {msg}")


def _check(q, k, v, qk_activation, qk_activated) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype not in _DTYPES:
            _fail(f"{name} has dtype {x.dtype}; the Triton kernel takes float16, bfloat16 or float32 "
                  "(use backend='torch' for float64)")
    if q.shape[-1] > _MAX_DIM or v.shape[-1] > _MAX_DIM:
        _fail(f"head dims up to {_MAX_DIM} are supported, got D={q.shape[-1]}, E={v.shape[-1]}")
    if not q.is_cuda and not triton_interpret():
        _fail("inputs must be CUDA tensors (or set TRITON_INTERPRET=1 for CPU)")
    check_qk_activation(q, k, qk_activation, qk_activated, _fail)


def triton_lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    qk_activation: str | None = None,
    qk_activated: tuple[torch.Tensor, torch.Tensor] | None = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked lightning attention in Triton; same contract as `lightning_attn` (inputs already validated).
    `reverse`: each sequence from its end; the kernels walk the time axis backwards (no flipped copies).
    `qk_activation="silu"`: q and k are raw and SiLU is applied inside the kernels (gradients are w.r.t. raw).
    `qk_activated`: (SiLU(q), SiLU(k)) when the caller has them: the kernels load those as they are, and backward
    only multiplies dq, dk by SiLU'(q), SiLU'(k) as it writes them (no separate SiLU backward, and dq, dk come
    out w.r.t. the raw q, k; no gradient flows into the activated copies)."""
    _check(q, k, v, qk_activation, qk_activated)
    q_act, k_act = qk_activated if qk_activated is not None else (None, None)
    decay = decay.detach().to(torch.float32).contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32)
    # torch.compile traces the custom op; eager calls skip its dispatch and autograd wrappers
    fn = fwd_op if torch.compiler.is_compiling() else EagerLightningAttn.apply
    o, final = fn(q, k, v, decay, float(scale), initial_state, bool(output_final_state), cu_seqlens,
                  qk_activation == "silu", q_act, k_act, bool(reverse))[:2]
    return o, (final if output_final_state else None)


def triton_attn_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None, qk_activation: str | None = None,
    qk_activated: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernels without autograd: (o, segment start states for `triton_attn_backward`, or an empty
    tensor; its shape is `triton_attn_states_shape`). `qk_activation`, `qk_activated`: as in
    `triton_lightning_attn`. No initial or final state."""
    _check(q, k, v, qk_activation, qk_activated)
    q_act, k_act = qk_activated if qk_activated is not None else (None, None)
    cu = cu_seqlens.to(torch.int32) if cu_seqlens is not None else None
    o, _, starts = fwd_impl(q, k, v, decay.detach().to(torch.float32).contiguous(), float(scale), None, False, cu,
                            qk_activation == "silu", q_act, k_act)
    return o, starts


def triton_attn_states_shape(q: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> tuple:
    """Shape of the start states `triton_attn_forward` returns (for fake implementations): (0,) when none."""
    return kept_starts_shape(q, v, cu_seqlens) or (0,)


def triton_attn_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, starts: torch.Tensor,
    *, scale: float = 1.0, cu_seqlens: torch.Tensor | None = None, qk_activation: str | None = None,
    qk_activated: tuple[torch.Tensor, torch.Tensor] | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernels of `triton_attn_forward`: (dq, dk, dv), w.r.t. the raw q, k with qk_activation.
    `out`: three tensors of q's, k's and v's shapes, any strides (e.g. slices of one packed gradient), to write
    into (H == Hkv only)."""
    q_act, k_act = qk_activated if qk_activated is not None else (None, None)
    cu = cu_seqlens.to(torch.int32) if cu_seqlens is not None else None
    if out is not None and any(o_.shape != x.shape for o_, x in zip(out, (q, k, v))):
        _fail(f"out shapes {[tuple(o_.shape) for o_ in out]} must be q's, k's and v's")
    dq, dk, dv, _ = bwd_core(do, None, q, k, v, decay.detach().to(torch.float32).contiguous(), None, cu,
                             float(scale), True, True, qk_activation == "silu",
                             fwd_starts=starts if starts.numel() else None, q_act=q_act, k_act=k_act, out=out)
    return dq, dk, dv


__all__ = ["triton_attn_backward", "triton_attn_forward", "triton_attn_states_shape", "triton_lightning_attn"]
