"""Training FLOPs per token and model FLOPs utilisation (MFU).

Dense layers: 6 N per token (forward 2N, backward 4N), N = parameters used in matrix products (the tied
embedding counts once, as the LM head). Linear attention (Lightning Attention-2, block C) per head and
token, forward: intra-block Q K^T and (.)V over the causal half of a C x C block, C (D + E), plus the
inter-block q S and k^T v state update, 4 D E; training is 3x forward. This counts linear attention's real
cost, not the softmax formula (which would be 2 T (D + E), quadratic in T).
"""

from __future__ import annotations

from typing import Any

# Dense bf16 peak of known accelerators (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def attention_flops_per_token(cfg: Any, seq_len: int, block: int = 64) -> float:
    """Forward FLOPs of the token mixers' attention per token (projections excluded: they are in 6N)."""
    layers = cfg.decoder_layers
    mixer = getattr(cfg, "token_mixer", "tnl")
    heads = cfg.decoder_attention_heads
    if mixer == "softmax":
        dim = cfg.decoder_embed_dim
        return layers * 2 * seq_len * dim  # causal: QK^T and PV over T/2 keys on average, 2 FLOPs each
    hidden = getattr(cfg, "hidden_dim", cfg.decoder_embed_dim)
    e = hidden // heads
    lrpe = list(getattr(cfg, "linear_use_lrpe_list", []) or []) + [0] * layers
    total = 0.0
    for i in range(layers):
        d = e * (2 if lrpe[i] else 1)
        c = min(block, seq_len)
        total += heads * (c * (d + e) + 4 * d * e)
    return total


def train_flops_per_token(model, seq_len: int) -> float:
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 3 * attention_flops_per_token(model.config, seq_len)


def peak_flops(device) -> float | None:
    """Peak dense bf16 FLOP/s of one device, or None when unknown (CPU): then MFU is not reported."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)
