"""Write a model in OpenNLPLab's TransNormerLLM layout (huggingface.co/OpenNLPLab/TransNormerLLM-*).

The layout (their config field names, their parameter names) is described in `tnl.official`, which also reads it.
Their modeling code is not copied: an export points `auto_map` at one of their hub repositories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tnl.atomic import atomic_folder
from tnl.checkpoint import write_checksums
from tnl.official import DEFAULT_CODE_REPO, official_problems, to_official_config, to_official_state_dict

from .errors import ExportError
from .hf import unwrap
from .target import replaceable_export


def _save_sharded(sd: dict[str, torch.Tensor], folder: Path, max_shard_size: str | int) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(sd, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: sd[n] for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
                 "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def export_official(model: torch.nn.Module, tokenizer: Any, out_dir: str | os.PathLike, *, overwrite: bool = False,
                    max_shard_size: str = "2GB", code_repo: str | None = DEFAULT_CODE_REPO) -> Path:
    """Write `model` in OpenNLPLab's layout: their config.json fields, their parameter names, safetensors shards.

    `auto_map` points at `code_repo` on the hub (their modeling code); `code_repo=None` leaves it out.
    """
    model = unwrap(model)
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "transnormer":
        raise ExportError("format=official needs a TransNormer model")
    problems = official_problems(cfg)
    if problems:
        raise ExportError("this model cannot be written in the official layout: " + "; ".join(problems))
    dtype = next(model.parameters()).dtype
    with atomic_folder(out_dir, overwrite, ExportError, replaceable_export) as tmp:
        config = to_official_config(cfg, dtype=dtype, code_repo=code_repo)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _save_sharded(to_official_state_dict(model), tmp, max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        from transformers import GenerationConfig

        GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                         pad_token_id=cfg.pad_token_id).save_pretrained(tmp)
        write_checksums(tmp)  # last: loading verifies the weights against it
    return Path(out_dir).expanduser().absolute()
