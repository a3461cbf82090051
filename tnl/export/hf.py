"""Hugging Face export: a folder that loads with `trust_remote_code=True` where tnl is not installed."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tnl.atomic import atomic_folder
from tnl.checkpoint import write_checksums

from .card import model_card, without_local_paths
from .code import write_model_code
from .errors import ExportError
from .target import replaceable_export

AUTO_MAP = {
    "AutoConfig": "configuration_transnormer.TransnormerConfig",
    "AutoModelForCausalLM": "modeling_transnormer.TransnormerForCausalLM",
}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under torch.compile / DDP / Accelerate wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
            type(model).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel") and hasattr(model, "module")
        ):
            model = model.module
        else:
            return model


@contextlib.contextmanager
def _no_remote_code_save(model: torch.nn.Module) -> Iterator[None]:
    # tnl.model registers its classes for the Auto API, so save_pretrained would call custom_object_save, which
    # copies tnl/model's files with their package-relative op import (it cannot resolve `..ops`). The export
    # writes its own flattened code and auto_map instead, so switch that off for the duration of the save.
    classes = [type(model), type(model.config)]
    saved = [c.__dict__.get("_auto_class", None) for c in classes]
    had = ["_auto_class" in c.__dict__ for c in classes]
    try:
        for c in classes:
            c._auto_class = None
        yield
    finally:
        for c, value, present in zip(classes, saved, had):
            if present:
                c._auto_class = value
            else:
                with contextlib.suppress(AttributeError):
                    delattr(c, "_auto_class")


def save_model_files(model: torch.nn.Module, folder: Path, max_shard_size: str | int) -> None:
    """Weights (sharded safetensors + index above max_shard_size), config.json with auto_map, generation config."""
    cfg = model.config
    old_auto_map = getattr(cfg, "auto_map", None)
    old_backend = getattr(cfg, "attn_backend", None)
    try:
        cfg.auto_map = dict(AUTO_MAP)
        if old_backend is not None:
            # whatever kernel training forced, the export picks its own: Triton on a GPU where it is installed,
            # PyTorch elsewhere (the op's "auto" dispatch)
            cfg.attn_backend = "auto"
        with _no_remote_code_save(model):
            model.save_pretrained(folder, max_shard_size=max_shard_size)
    finally:
        if old_backend is not None:
            cfg.attn_backend = old_backend
        if old_auto_map is None:
            with contextlib.suppress(AttributeError):
                del cfg.auto_map
        else:
            cfg.auto_map = old_auto_map
    if not (folder / "generation_config.json").exists():
        from transformers import GenerationConfig

        GenerationConfig.from_model_config(cfg).save_pretrained(folder)


def _plain(obj: Any) -> Any:
    """An OmegaConf node (or anything mapping-like) as plain JSON-able data."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:
        pass
    return json.loads(json.dumps(obj, default=str))


def _card_config(cfg: Any) -> dict[str, Any]:
    """The model's own fields (PretrainedConfig's generic defaults such as id2label left out)."""
    from transformers import PretrainedConfig

    generic = set(PretrainedConfig().to_dict()) - {"bos_token_id", "eos_token_id", "pad_token_id",
                                                   "tie_word_embeddings", "dtype", "torch_dtype"}
    return {k: v for k, v in cfg.to_dict().items() if k not in generic and not k.startswith("_")}


def export_hf(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    train_config: dict | None = None,
    eval_results: dict | list[dict] | None = None,
    overwrite: bool = False,
    max_shard_size: str = "2GB",
) -> Path:
    """Write `model` + `tokenizer` as a self-contained Hugging Face folder and return its path.

    The folder holds config.json (with auto_map), safetensors weights (sharded with an index above
    `max_shard_size`), the modeling code and the tnl modules it imports (flattened), tokenizer files,
    generation_config.json and a README.md model card with `train_config` and the `eval_results` table.
    checksums.json (sha256 of every file, as checkpoints have) comes last. It is written beside `out_dir` and
    renamed into place; a non-empty `out_dir` needs `overwrite=True` and must hold a previous export.
    """
    model = unwrap(model)
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "transnormer":
        raise ExportError(f"export_hf exports TransNormer models; got model_type {getattr(cfg, 'model_type', None)!r}")
    if tokenizer is None:
        raise ExportError("export_hf needs the tokenizer the model was trained with")
    # local absolute paths (data.path, cache_dir, output_dir, model_path) stay out of a folder meant for the hub
    train_config = without_local_paths(_plain(train_config)) if train_config else None
    eval_results = without_local_paths(_plain(eval_results)) if eval_results else None
    with atomic_folder(out_dir, overwrite, ExportError, replaceable_export) as tmp:
        save_model_files(model, tmp, max_shard_size)
        write_model_code(tmp)
        tokenizer.save_pretrained(tmp)
        num_params = sum(p.numel() for p in model.parameters())
        card = model_card(_card_config(cfg), train_config=train_config, eval_results=eval_results,
                          num_params=num_params)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if eval_results:
            (tmp / "eval_results.json").write_text(json.dumps(eval_results, indent=2), encoding="utf-8")
        write_checksums(tmp, skip=("README.md",))  # last; the card stays editable before an upload
    return Path(out_dir).expanduser().absolute()
