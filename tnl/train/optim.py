"""AdamW with two parameter groups: weight decay on the weight matrices, none on norms, embeddings and biases.

The usual recipe (decoupled weight decay, Loshchilov & Hutter 2019, applied to the matrices of linear layers
only): decaying a norm's gain or a bias pulls it towards zero, which is not a simpler model, and decaying the
embedding shrinks rare tokens' rows more than frequent ones. `optim.no_decay` names the kinds left out (a kind
taken off the list decays, a 1-D bias too); other parameters than weight matrices (LRPE angles, scalars) never
decay.
"""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY_KINDS = ("bias", "norm", "embedding")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)


def _kind(module: nn.Module, name: str) -> str | None:
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _NORMS) or "Norm" in type(module).__name__:
        return "norm"
    if name == "bias":
        return "bias"
    return None


def decay_split(model: nn.Module, no_decay: list[str] | tuple[str, ...] = NO_DECAY_KINDS
                ) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """(decayed, not decayed) trainable parameters by name. A tensor shared by several modules (the tied LM head
    and embedding) is one parameter, of the kind of any module that holds it as an embedding or a norm."""
    kinds: dict[int, set[str | None]] = {}
    names: dict[int, tuple[str, nn.Parameter]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            kinds.setdefault(id(param), set()).add(_kind(module, name))
            names.setdefault(id(param), (f"{module_name}.{name}" if module_name else name, param))
    decay, keep = {}, {}
    for key, (name, param) in names.items():
        named = {k for k in kinds[key] if k is not None}
        decays = not named & set(no_decay) if named else param.dim() >= 2 and name.endswith("weight")
        (decay if decays else keep)[name] = param
    return decay, keep


def build_optimizer(cfg, model: nn.Module, on_cuda: bool) -> torch.optim.Optimizer:
    """AdamW of `cfg.optim` over the trainable parameters, in two groups (`decay_split`)."""
    o = cfg.optim
    decay, keep = decay_split(model, tuple(o.get("no_decay", NO_DECAY_KINDS)))
    groups = [{"params": list(decay.values()), "weight_decay": o.weight_decay},
              {"params": list(keep.values()), "weight_decay": 0.0}]
    fused = on_cuda if o.fused is None else o.fused
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
