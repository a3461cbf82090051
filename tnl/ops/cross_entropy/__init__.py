"""Cross-entropy of a linear head (`hidden @ weight.T`) without keeping the logits: the fused form computes
the loss and both gradients chunk by chunk in the forward, so training never holds more than one chunk of
logits and never writes them in fp32. `naive.py` is the reference it is tested against."""

from .fused import fused_linear_cross_entropy
from .naive import naive_linear_cross_entropy

__all__ = ["fused_linear_cross_entropy", "naive_linear_cross_entropy"]
