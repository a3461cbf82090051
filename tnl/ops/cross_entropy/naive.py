"""Reference: full logits, then torch's cross-entropy in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import accumulation_dtype


def naive_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) with the softmax in fp32 (or float64 for float64 inputs)."""
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight)
    acc = accumulation_dtype(logits.dtype)
    return F.cross_entropy(logits.to(acc), targets.reshape(-1), ignore_index=ignore_index, reduction=reduction)
