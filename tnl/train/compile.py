"""torch.compile for training: what the compiled graph keeps for backward.

AOTAutograd's min-cut partitioner decides which forward results backward reads (saved) and which it computes
again (recomputed). Two settings matter for a TNL block:

- `recompute_pointwise`: by default the partitioner never recomputes a pointwise result that backward would have
  to write out in full (`ban_recompute_materialized_backward`), e.g. SiLU(q) and SiLU(k) (inputs of the
  attention op's backward), u * SRMSNorm(o) (the out-projection's input, needed for its weight gradient) and the
  SGLU product (l3's input). Each is one cheap pass over tensors backward reads anyway, but keeping them costs
  11,776 of 37,388 saved bytes per token and block at tnl_385m (`python -m tools.activation_memory --compile`):
  8.6 GiB at 32k tokens per step. Allowing the recompute brings the compiled graph to the eager model's
  25,612 bytes (the custom autograd Functions of `tnl.model` make the same trade by hand).
- `memory_budget` (< 1): keep at most that fraction of the activations, recompute more (including matmuls).
"""

from __future__ import annotations

import torch
import torch._functorch.config as functorch_config


def check_memory_budget(memory_budget: float) -> None:
    if not 0.0 < memory_budget <= 1.0:
        raise ValueError(f"compile_memory_budget={memory_budget} must be in (0, 1]; 1 keeps all activations the "
                         "compiled graph wants, lower values recompute more")


def configure_partitioner(memory_budget: float = 1.0, recompute_pointwise: bool = True) -> None:
    """Set the partitioner's choices for graphs compiled after this call (process-wide functorch config)."""
    check_memory_budget(memory_budget)
    functorch_config.activation_memory_budget = memory_budget
    functorch_config.ban_recompute_materialized_backward = not recompute_pointwise


def compile_for_training(model: torch.nn.Module, memory_budget: float = 1.0, recompute_pointwise: bool = True,
                         mode: str | None = None) -> torch.nn.Module:
    """torch.compile(model) with the partitioner configured as above. Dynamo is reset first: it would otherwise
    reuse a graph compiled earlier in this process for another instance of the model class (parameters are graph
    inputs), partitioned under the settings of that time."""
    configure_partitioner(memory_budget, recompute_pointwise)
    torch._dynamo.reset()
    return torch.compile(model, mode=mode)
