"""Text generation: `tnl generate` and the decoding loop the generation benchmark times."""

from .decode import Generation, generate_ids, stop_index
from .sampling import GenerateError, SamplingSettings, logits_processors, next_tokens

__all__ = ["GenerateError", "Generation", "SamplingSettings", "generate_ids", "logits_processors", "next_tokens",
           "stop_index"]
