"""A new run from trained weights (`train.init_from=PATH`) and parameters kept fixed (`train.freeze`).

`init_from` takes the model config, the weights and the tokenizer from PATH (a tnl export, a checkpoint, a run
folder or an official TransNormerLLM folder); optimizer, schedule and step start fresh. That differs from
`resume`, which continues one run exactly. The model and tokenizer groups are replaced by PATH's, so the run's
config.yaml and a later resume of this run see what was trained; command-line model keys that keep the shapes
(dropout, attn_backend, ...) still apply, ones that change them are refused.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from tnl.errors import UserError

# set from the tokenizer when the model config is built (tnl.train.loop.model_config)
_FROM_TOKENIZER = {"eos_token_id", "bos_token_id", "pad_token_id"}


class InitFromError(UserError):
    """train.init_from or train.freeze that cannot be applied."""


@dataclass
class InitSource:
    path: Path
    kind: str
    state_dict: dict[str, torch.Tensor]


def _model_fields(config: Any) -> dict[str, Any]:
    from tnl.model import TransnormerConfig

    params = inspect.signature(TransnormerConfig.__init__).parameters
    return {k: getattr(config, k) for k in params if k not in ("self", "kwargs") and k not in _FROM_TOKENIZER
            and hasattr(config, k)}


def command_line_overrides() -> list[str]:
    """The keys the command line set (Hydra's task overrides); none outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o).split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]


def _shapes(fields: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from tnl.model import TransnormerConfig, TransnormerForCausalLM

    with torch.device("meta"):
        model = TransnormerForCausalLM(TransnormerConfig(**fields))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def prepare_init(cfg: DictConfig, log, overrides: list[str] | None = None) -> InitSource:
    """Load PATH; replace `cfg.model` with its model config (plus the command line's model keys that keep the
    shapes) and `cfg.tokenizer` with its tokenizer folder. Returns the weights to start from."""
    from tnl.checkpoint import load_pretrained
    from tnl.model import TransnormerForCausalLM

    path = str(cfg.train.init_from)
    keys = command_line_overrides() if overrides is None else overrides
    if "model" in keys or "tokenizer" in keys or any(k.startswith("tokenizer.") for k in keys):
        raise InitFromError(f"train.init_from={path} takes the model and tokenizer from that folder; remove the "
                            "model= / tokenizer settings (model.* keys that keep the shapes, such as dropout, apply)")
    loaded = load_pretrained(path, name="train.init_from", log=log)
    if not isinstance(loaded.model, TransnormerForCausalLM):
        raise InitFromError(f"train.init_from={path} holds a {type(loaded.model).__name__}, not a TNL model; give "
                            "a tnl export, checkpoint or run folder, or an official TransNormerLLM folder")
    if loaded.tokenizer is None:
        raise InitFromError(f"train.init_from={path} has no tokenizer (tokenizer.json / tokenizer_config.json); "
                            "copy the model's tokenizer files into that folder")
    tokenizer_dir = (loaded.run_dir / "tokenizer" if loaded.kind == "checkpoint" else loaded.path).resolve()
    fields = _model_fields(loaded.model.config)
    asked = {k.removeprefix("model."): cfg.model[k.removeprefix("model.")] for k in keys if k.startswith("model.")}
    changed = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(asked), resolve=True).items()
               if fields.get(k) != v}
    wanted = {**fields, **changed}
    state_dict = dict(loaded.model.state_dict())
    have = {k: tuple(v.shape) for k, v in state_dict.items()}

    def fits(model_fields: dict[str, Any]) -> bool:
        try:
            return _shapes(model_fields) == have
        except (ValueError, TypeError):  # a config the model refuses (e.g. an LRPE list of another length)
            return False

    if not fits(wanted):
        bad = [k for k in changed if not fits({**fields, k: changed[k]})] or list(changed)
        listed = "; ".join(f"model.{k}: {fields.get(k)} -> {changed[k]}" for k in bad)
        raise InitFromError(f"train.init_from={path}: {listed or 'the model config'} changes the shapes of its "
                            "weights; drop these overrides (the model config comes from train.init_from), or train "
                            "a new model without train.init_from")
    with open_dict(cfg):
        cfg.model = wanted
        for key, value in {"kind": "hf", "name": str(tokenizer_dir), "vocab_size": None, "min_frequency": 2}.items():
            cfg.tokenizer[key] = value
    n_params = sum(p.numel() for p in loaded.model.parameters())
    log(f"init_from: {loaded.kind} weights of {loaded.path} ({n_params / 1e6:.2f}M "
        f"parameters), its model config and tokenizer ({tokenizer_dir}); optimizer, schedule and step start fresh"
        + (f"; model keys changed: {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else ""))
    return InitSource(loaded.path, loaded.kind, state_dict)


def load_init_weights(model: torch.nn.Module, source: InitSource) -> None:
    from tnl.checkpoint import load_weights

    with torch.no_grad():
        load_weights(model, source.state_dict, source.path)


def _matches(name: str, pattern: str) -> bool:
    """A pattern names a module or parameter by its full dotted name or any dotted tail of it, with shell
    wildcards: `embed_tokens`, `model.layers.0`, `*.channel_mixer.*` ..."""
    parts = name.split(".")
    tails = [".".join(parts[i:]) for i in range(len(parts))]
    return any(fnmatchcase(t, pattern) or fnmatchcase(t, pattern + ".*") for t in tails)


def freeze(model: torch.nn.Module, patterns: list[str], log) -> None:
    """Keep the parameters that `patterns` name fixed (requires_grad off), before the optimizer is built; a
    pattern that matches nothing is refused."""
    if not patterns:
        return
    named = list(model.named_parameters(remove_duplicate=False))
    frozen: dict[int, torch.nn.Parameter] = {}
    for pattern in patterns:
        hits = [p for n, p in named if _matches(n, str(pattern))]
        if not hits:
            examples = ", ".join(sorted({n.rsplit(".", 1)[0] for n, _ in named})[:4])
            raise InitFromError(f"train.freeze pattern '{pattern}' matches no parameter of the model; name a module "
                                f"or parameter (a dotted name or its tail, wildcards allowed), e.g. {examples}")
        frozen.update((id(p), p) for p in hits)
    for p in frozen.values():
        p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    kept = sum(p.numel() for p in frozen.values())
    if kept == total:
        raise InitFromError(f"train.freeze={list(patterns)} keeps every parameter fixed; leave some to train")
    log(f"freeze: {kept / 1e6:.3f}M of {total / 1e6:.3f}M parameters kept fixed ({', '.join(map(str, patterns))})")
