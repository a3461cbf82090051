"""One-token recurrent update for decoding: S <- lambda S + k^T v, o = scale * q S."""

from __future__ import annotations

import torch


def recurrent_lightning_attn_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    state: torch.Tensor,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [B, H, D]; k: [B, Hkv, D]; v: [B, Hkv, E]; state: [B, H, D, E] fp32. Returns (o [B, H, E], new state)."""
    h = q.shape[1]
    group = h // k.shape[1]
    acc = state.dtype
    kf = k.to(acc).repeat_interleave(group, dim=1)
    vf = v.to(acc).repeat_interleave(group, dim=1)
    lam = torch.exp(-decay.to(acc)).view(1, h, 1, 1)
    new_state = lam * state + kf.unsqueeze(-1) * vf.unsqueeze(-2)
    o = scale * (q.to(acc).unsqueeze(-2) @ new_state).squeeze(-2)
    return o.to(q.dtype), new_state
