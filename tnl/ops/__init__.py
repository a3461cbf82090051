"""Kernels and their PyTorch references: lightning attention and the fused LM-head cross-entropy.
Importable with torch alone (Triton is loaded only where a kernel runs)."""

from .cross_entropy import fused_linear_cross_entropy
from .lightning_attn import lightning_attn, lightning_attn_layer, recurrent_lightning_attn_step

__all__ = ["fused_linear_cross_entropy", "lightning_attn", "lightning_attn_layer", "recurrent_lightning_attn_step"]
