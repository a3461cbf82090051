"""Lightning attention: the public `lightning_attn` and the forms behind it.

- `naive.py`: masked quadratic form (tests only).
- `chunk.py`: blockwise PyTorch form, differentiable, any device: the reference.
- `recurrent.py`: one-token state update for decoding.
"""

from .chunk import chunk_lightning_attn
from .interface import BACKENDS, lightning_attn, resolve_backend
from .naive import naive_lightning_attn
from .recurrent import recurrent_lightning_attn_step

__all__ = [
    "BACKENDS",
    "chunk_lightning_attn",
    "lightning_attn",
    "naive_lightning_attn",
    "recurrent_lightning_attn_step",
    "resolve_backend",
]
