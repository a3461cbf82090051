"""Argument checks that the public `lightning_attn` and the Triton entry points share."""

from __future__ import annotations

from collections.abc import Callable

import torch


def check_qk_activation(q: torch.Tensor, k: torch.Tensor, qk_activation: str | None,
                        qk_activated: tuple[torch.Tensor, torch.Tensor] | None, fail: Callable[[str], None]) -> None:
    """The activation arguments shared by every entry point; `fail` raises with the caller's prefix."""
    if qk_activation not in (None, "silu"):
        fail(f"qk_activation must be None or 'silu', got {qk_activation!r}")
    if qk_activated is None:
        return
    if qk_activation != "silu":
        fail("qk_activated needs qk_activation='silu' (q, k raw; qk_activated = their SiLU)")
    qa, ka = qk_activated
    if qa.shape != q.shape or ka.shape != k.shape or qa.dtype != q.dtype or ka.dtype != k.dtype:
        fail(f"qk_activated must match q {tuple(q.shape)} and k {tuple(k.shape)} in shape and dtype, got "
             f"{tuple(qa.shape)}, {tuple(ka.shape)}")
