"""Load a model and its tokenizer from any folder tnl produces or reads.

- a training checkpoint `RUN/checkpoints/step_N/` (Accelerate `save_state`: `model.safetensors`): the model is
  rebuilt from `RUN/model_config.json` (or the `model:` mapping of `RUN/.hydra/config.yaml` / `RUN/config.yaml`,
  whichever the run saved; it also becomes the model card's training config), the tokenizer is
  `RUN/tokenizer/`; a run folder itself means its latest checkpoint;
- an exported Hugging Face folder (config.json + weights + tokenizer files), tnl's own or any causal LM;
- an OpenNLPLab TransNormerLLM folder (their config field names; see `official.py`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ExportError

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    kind: str  # "checkpoint" | "hf" | "official"
    path: Path
    run_dir: Path | None = None
    train_config: dict[str, Any] | None = field(default=None, repr=False)


def latest_checkpoint(run_dir: Path, log=print) -> Path | None:
    """The newest step_N of a run whose files match their checksums (as resume picks it); broken ones are
    reported and skipped, so a corrupt newest save never ends up evaluated or exported."""
    from tnl.train.checkpoint import latest_valid

    return latest_valid(run_dir / "checkpoints", log=log)


def verify_checkpoint(ckpt: Path, log=print) -> None:
    """A checkpoint named explicitly must match its checksums (tnl writes checksums.json into each one)."""
    from tnl.train.checkpoint import CHECKSUMS, verify

    if not (ckpt / CHECKSUMS).exists():
        log(f"WARNING: {ckpt} has no {CHECKSUMS}; its files cannot be verified")
        return
    problem = verify(ckpt)
    if problem is not None:
        raise ExportError(f"checkpoint {ckpt} is broken ({problem}); pick an earlier step_N or give the run "
                          "folder to use its newest valid checkpoint")


def find_run_dir(ckpt: Path) -> Path | None:
    """The run folder above a checkpoint: the nearest ancestor with model_config.json or .hydra/config.yaml."""
    for parent in list(ckpt.parents)[:3]:
        if (parent / "model_config.json").exists() or (parent / ".hydra" / "config.yaml").exists() or (
            parent / "config.yaml"
        ).exists() and (parent / "checkpoints").is_dir():
            return parent
    return None


def _weight_files(folder: Path) -> list[Path]:
    for pattern in ("model.safetensors", "model-*-of-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd.update(load_file(str(f)))
        else:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
    return sd


def strip_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names without torch.compile / DDP prefixes (a checkpoint of a wrapped model has them)."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: Path) -> None:
    """Load `sd` strictly, allowing only tied weights (saved once) to be absent."""
    result = model.load_state_dict(sd, strict=False)
    # Tied weights are saved under one of their names (Accelerate/safetensors drop the duplicates): a missing name
    # is fine when another name of the same tensor was loaded.
    names: dict[int, set[str]] = {}
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for n, t in tensors:
        names.setdefault(id(t), set()).add(n)
    alias = {n: group for group in names.values() for n in group}
    missing = [k for k in result.missing_keys if not (alias.get(k, set()) & sd.keys())]
    if missing or result.unexpected_keys:
        raise ExportError(f"weights in {source} do not fit the model config: missing {missing[:4]}, "
                          f"unexpected {result.unexpected_keys[:4]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _model_config_from_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    train_cfg = None
    for saved in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml"):
        if saved.exists():
            from omegaconf import OmegaConf

            train_cfg = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
            break
    if (run_dir / "model_config.json").exists():
        return json.loads((run_dir / "model_config.json").read_text()), train_cfg
    if train_cfg and isinstance(train_cfg.get("model"), dict):
        return dict(train_cfg["model"]), train_cfg
    raise ExportError(f"{run_dir} has neither model_config.json nor a model: section in .hydra/config.yaml")


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # missing or unreadable files
        raise ExportError(f"cannot load the tokenizer from {folder} ({type(err).__name__}); "
                          "it should hold tokenizer.json / tokenizer_config.json") from None


def load_checkpoint(ckpt: Path) -> LoadedModel:
    from tnl.model import TransnormerConfig, TransnormerForCausalLM

    run_dir = find_run_dir(ckpt)
    if run_dir is None:
        raise ExportError(f"{ckpt} looks like a checkpoint but no run folder with model_config.json is above it")
    model_cfg, train_cfg = _model_config_from_run(run_dir)
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        model_cfg.pop(key, None)
    config = TransnormerConfig(**model_cfg)
    model = TransnormerForCausalLM(config)
    load_weights(model, strip_wrappers(read_state_dict(_weight_files(ckpt))), ckpt)
    if not (run_dir / "tokenizer").is_dir():
        raise ExportError(f"{run_dir}/tokenizer is missing; the training run saves its tokenizer there")
    return LoadedModel(model.eval(), _load_tokenizer(run_dir / "tokenizer"), "checkpoint", ckpt, run_dir, train_cfg)


def load_hf(folder: Path) -> LoadedModel:
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") == "transnormer":
        from .official import is_official_config, load_official

        if is_official_config(config):
            return load_official(folder)
        from tnl.model import TransnormerForCausalLM

        model = TransnormerForCausalLM.from_pretrained(str(folder))
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder))
        except Exception as err:
            raise ExportError(f"cannot load a causal LM from {folder} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return LoadedModel(model.eval(), _load_tokenizer(folder), "hf", folder)


def load_pretrained(path: str | os.PathLike, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> LoadedModel:
    """Model (in eval mode) and tokenizer from a checkpoint, run, exported HF or official folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ExportError(f"model_path {p} does not exist")
    if not p.is_dir():
        raise ExportError(f"model_path {p} is a file; give a checkpoint folder (.../checkpoints/step_N) or an "
                          "exported model folder")
    if p.name == "checkpoints" and not (p / "checkpoints").is_dir() and not _weight_files(p):
        p = p.parent  # RUN/checkpoints means the run
    verified = False  # checksums already read (hashing a multi-GB checkpoint twice costs seconds)
    if (p / "checkpoints").is_dir() and not _weight_files(p):
        latest = latest_checkpoint(p)
        if latest is None:
            raise ExportError(f"run folder {p} has no valid checkpoints/step_N (none yet, or all broken)")
        p, verified = latest, True
    if (p / "config.json").exists() and _weight_files(p):
        loaded = load_hf(p)
    elif _weight_files(p):
        if not verified:
            verify_checkpoint(p)
        loaded = load_checkpoint(p)
    else:
        raise ExportError(f"{p} is not a model: no model.safetensors / pytorch_model.bin (a checkpoint) and no "
                          "config.json with weights (an exported folder)")
    if dtype is not None:
        loaded.model.to(dtype)
    if device is not None:
        loaded.model.to(device)
    return loaded
