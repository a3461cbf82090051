"""Masked quadratic form of lightning attention (for tests and tiny inputs).

o_t = scale * (sum_{j<=t} lambda^(t-j) (q_t . k_j) v_j + lambda^(t+1) q_t S_0), lambda = exp(-s).
Memory grows with T^2: use it only as a reference.
"""

from __future__ import annotations

import torch

from ..common import accumulation_dtype
from .chunk import heads_first


def naive_lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense [T, T] decay-masked attention on one packed batch (no cu_seqlens). Inputs are validated upstream."""
    out_dtype = q.dtype
    acc = accumulation_dtype(q.dtype)
    b, t, h, _ = q.shape
    qf, kf, vf = heads_first(q, k, v)  # [B, H, T, .]
    s = decay.to(acc).view(1, h, 1, 1)
    pos = torch.arange(t, device=q.device, dtype=acc)
    dist = pos.view(-1, 1) - pos.view(1, -1)  # i - j
    causal = dist >= 0
    mask = torch.where(causal, torch.exp(-s * dist.clamp(min=0)), torch.zeros((), dtype=acc, device=q.device))
    scores = (qf @ kf.transpose(-1, -2)) * mask
    o = scores @ vf
    if initial_state is not None:
        lam_pow = torch.exp(-s * (pos + 1).view(1, 1, -1, 1))  # lambda^(t+1)
        o = o + lam_pow * (qf @ initial_state.to(acc))
    o = (o * scale).transpose(1, 2).to(out_dtype)
    final = None
    if output_final_state:
        w = torch.exp(-s * (t - 1 - pos).view(1, 1, -1, 1))  # lambda^(T-1-j)
        final = (kf * w).transpose(-1, -2) @ vf
        if initial_state is not None:
            final = final + torch.exp(-s * t) * initial_state.to(acc)
        final = final.float() if acc != torch.float64 else final
    return o, final
