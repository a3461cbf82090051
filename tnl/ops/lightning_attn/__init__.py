"""Lightning attention: the public `lightning_attn` and the forms behind it.

- `interface.py`: `lightning_attn` (validation, varlen, backend choice).
- `layer.py`: `lightning_attn_layer`, the layer-aware interface (decay from layer_idx / num_layers).
- `naive.py`: masked quadratic form (tests only).
- `chunk.py`: blockwise PyTorch form, differentiable, any device: the reference.
- `cumsum.py`: standard linear attention (every state materialised by a cumulative sum): a benchmark baseline.
- `recurrent.py`: one-token state update for decoding.
- The Triton form: `triton_entry.py` (entry points) over `passes.py` (passes, custom ops, autograd), `plan.py`
  (segments), `tuning.py` with `tuned_configs.py` (launch configs), `triton_kernels.py` (the kernels) and
  `options.py` (KernelOptions, development overrides). docs/kernels.md describes the design.
"""

from .chunk import chunk_lightning_attn
from .cumsum import cumsum_lightning_attn
from .interface import BACKENDS, lightning_attn, resolve_backend
from .layer import layer_decay, lightning_attn_layer
from .naive import naive_lightning_attn
from .recurrent import recurrent_lightning_attn_step

__all__ = [
    "BACKENDS",
    "chunk_lightning_attn",
    "cumsum_lightning_attn",
    "layer_decay",
    "lightning_attn",
    "lightning_attn_layer",
    "naive_lightning_attn",
    "recurrent_lightning_attn_step",
    "resolve_backend",
]
