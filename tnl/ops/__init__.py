"""Attention kernels and their PyTorch references. Importable with torch alone."""

from .lightning_attn import lightning_attn, recurrent_lightning_attn_step

__all__ = ["lightning_attn", "recurrent_lightning_attn_step"]
