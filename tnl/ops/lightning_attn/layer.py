"""The layer-aware interface of lightning attention (the Lightning Attention papers' TNL layers; ejkernel's
`lightning_attn`): per-head decay derived from the layer's depth, a softmax-style default scale.

    lightning_attn_layer(query, key, value, layer_idx, num_layers) == lightning_attn(query, key, value, decay,
        scale=1/sqrt(head_dim), initial_state=..., output_final_state=True)
    with decay[h] = -g_gamma[h] = (8 / H) * (1 - layer_idx / num_layers) * h, h = 0 .. H-1.
"""

from __future__ import annotations

import math

import torch

from .interface import lightning_attn


def _fail(msg: str) -> None:
    raise ValueError(f"lightning_attn_layer: {msg}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def layer_decay(num_heads: int, layer_idx: int, num_layers: int, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """decay = -g_gamma, g_gamma[h] = -(8 / num_heads) * (1 - layer_idx / num_layers) * h for h = 0 .. H-1 ([H];
    made on `device` directly, no host-to-device copy)."""
    rate = (8.0 / num_heads) * (1.0 - layer_idx / num_layers)
    return torch.arange(num_heads, device=device, dtype=torch.float64).mul_(rate).to(dtype)


def lightning_attn_layer(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layer_idx: int,
    num_layers: int,
    softmax_scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lightning attention of layer `layer_idx` of `num_layers`: `lightning_attn` with the TNL decay of that depth.

    query: [B, T, H, D]; key: [B, T, Hkv, D]; value: [B, T, Hkv, E] (grouped heads: H % Hkv == 0).
    Per head h = 0 .. H-1: g_gamma = -(8 / H) * (1 - layer_idx / num_layers) * h, and
    S_t = exp(g_gamma) S_{t-1} + k_t^T v_t, o_t = softmax_scale * q_t S_t (head 0 never decays).
    softmax_scale: default 1 / sqrt(D). initial_state: [N, H, D, E] (N = B, or the number of sequences with
    cu_seqlens, where B must be 1). reverse: each sequence from its end. backend: as in `lightning_attn`.
    Returns (output [B, T, H, E] in query's dtype, final_state [N, H, D, E] fp32).
    """
    if not _is_int(layer_idx) or not _is_int(num_layers) or num_layers < 1 or not 0 <= layer_idx <= num_layers:
        _fail(f"layer_idx={layer_idx!r}, num_layers={num_layers!r}: need integers with num_layers >= 1 and "
              "0 <= layer_idx <= num_layers (a deeper index would make the decay negative)")
    if not isinstance(query, torch.Tensor) or query.dim() != 4:
        _fail(f"query must be a 4-D tensor [B, T, heads, dim], got shape {tuple(getattr(query, 'shape', ()))}")
    b, _, h, d = query.shape
    if cu_seqlens is not None:
        if b != 1:
            _fail(f"cu_seqlens needs a packed batch of one (B = 1), got B = {b}; flatten the batch first")
        n = cu_seqlens.numel() - 1
        if initial_state is not None and (initial_state.dim() != 4 or initial_state.shape[0] != n):
            _fail(f"initial_state needs one state per sequence: shape [{n}, {h}, {d}, E] for the {n} sequences of "
                  f"cu_seqlens, got {tuple(initial_state.shape)}")
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else float(softmax_scale)
    # float64 rates for float64 inputs (the references); the kernels take fp32
    decay = layer_decay(h, layer_idx, num_layers, query.device,
                        torch.float64 if query.dtype == torch.float64 else torch.float32)
    o, final = lightning_attn(query, key, value, decay, scale=scale, initial_state=initial_state,
                              output_final_state=True, cu_seqlens=cu_seqlens, backend=backend, reverse=reverse)
    return o, final
