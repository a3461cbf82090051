"""Blockwise PyTorch lightning attention (Lightning Attention-2, Qin et al. 2024, Alg. 1).

Within a block of C tokens: masked Q K^T with decay (quadratic in C). Across blocks: a D x E state
S carried forward, S <- lambda^C S + sum_j lambda^(C-1-j) k_j^T v_j. Differentiable through autograd;
this is the reference every kernel is tested against, and the fallback on any device.
"""

from __future__ import annotations

import torch

from ..common import accumulation_dtype


def heads_first(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v [B, T, H or Hkv, .] as [B, H, T, .] in the accumulation dtype, k and v repeated over each group of q
    heads (the PyTorch forms trade that copy for simplicity; the kernels read grouped heads in place)."""
    acc = accumulation_dtype(q.dtype)
    group = q.shape[2] // k.shape[2]
    return tuple(x.to(acc).repeat_interleave(g, dim=2).transpose(1, 2) for x, g in ((q, 1), (k, group), (v, group)))


def chunk_lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    block_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Blockwise form on one packed batch (no cu_seqlens). State and accumulation in fp32 (fp64 for fp64)."""
    out_dtype = q.dtype
    acc = accumulation_dtype(q.dtype)
    b, t, h, d = q.shape
    e = v.shape[-1]
    qf, kf, vf = heads_first(q, k, v)  # [B, H, T, .]
    s = decay.to(acc).view(1, h, 1, 1)
    if initial_state is None:
        state = qf.new_zeros(b, h, d, e)
    else:
        state = initial_state.to(acc)

    c = min(block_size, t)
    idx = torch.arange(c, device=q.device, dtype=acc)
    dist = idx.view(-1, 1) - idx.view(1, -1)
    intra_full = torch.where(dist >= 0, torch.exp(-s * dist.clamp(min=0)), torch.zeros((), dtype=acc, device=q.device))
    outs = []
    for start in range(0, t, c):
        n = min(c, t - start)
        qb, kb, vb = qf[:, :, start : start + n], kf[:, :, start : start + n], vf[:, :, start : start + n]
        pos = idx[:n]
        intra = (qb @ kb.transpose(-1, -2)) * intra_full[..., :n, :n]
        o_blk = intra @ vb + torch.exp(-s * (pos + 1).view(1, 1, -1, 1)) * (qb @ state)
        outs.append(o_blk)
        k_decayed = kb * torch.exp(-s * (n - 1 - pos).view(1, 1, -1, 1))
        state = torch.exp(-s * n) * state + k_decayed.transpose(-1, -2) @ vb
    o = (torch.cat(outs, dim=2) * scale).transpose(1, 2).to(out_dtype)
    final = None
    if output_final_state:
        final = state if acc == torch.float64 else state.float()
    return o, final
