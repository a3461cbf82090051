"""Where an export may be written: never into, over or around the folder it was made from, and `overwrite=true`
only ever replaces a folder that holds a previous export.

An export is a flat folder: config.json, model weights (safetensors or pytorch_model*.bin), and since exports carry
checksums, checksums.json. Exports written before checksums existed (config.json + weights) still count. A training
run or checkpoint (checkpoints/, model_config.json, trainer_state.json, .hydra/, subfolders such as tokenizer/) never
does, so a mistyped out_dir cannot wipe a run.
"""

from __future__ import annotations

import os
from pathlib import Path

from tnl.checkpoint import find_run_dir, weight_files

from .errors import ExportError

# files and folders that mark a training run or checkpoint, never an export
RUN_MARKERS = ("checkpoints", "model_config.json", "trainer_state.json", ".hydra", "config.yaml", "metrics.jsonl")


def not_an_export(folder: Path) -> str | None:
    """Why `folder` is not a previous export (None: it is one)."""
    present = [m for m in RUN_MARKERS if (folder / m).exists()]
    if present:
        return f"it holds {present[0]}, part of a training run"
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        return f"it holds the subfolder {subfolders[0]}/ (an export is flat)"
    if not (folder / "config.json").is_file():
        return "it has no config.json"
    if not weight_files(folder):
        return "it has no model weights"
    return None


def replaceable_export(folder: Path) -> str | None:
    """For `tnl.atomic.atomic_folder`: the one-line refusal when `folder` is not a previous export."""
    reason = not_an_export(folder)
    if reason is None:
        return None
    return (f"{folder} is not a previous export ({reason}); overwrite=true only replaces a folder that holds an "
            "export (config.json + model weights, no subfolders), so choose a new or empty out_dir")


def source_folder(model_path: str | os.PathLike) -> Path:
    """The folder an export is made from, symlinks resolved: the training run around a checkpoint, else the
    model folder itself."""
    src = Path(model_path).expanduser().resolve()
    if (src / "checkpoints").is_dir():
        return src
    if src.name == "checkpoints":
        return src.parent
    if src.parent.name == "checkpoints":
        return src.parent.parent
    return find_run_dir(src) or src


def check_not_source(out_dir: str | os.PathLike, model_path: str | os.PathLike) -> None:
    """Refuse an out_dir equal to, inside or containing the folder being exported (symlinks resolved).

    The run's own `export/` folder, which `tnl train` writes, stays allowed."""
    src = source_folder(model_path)
    out = Path(out_dir).expanduser().resolve()
    if out == src:
        where = "is"
    elif out in src.parents:
        where = "contains"
    elif src in out.parents and out != src / "export":
        where = "is inside"
    else:
        return
    what = "the folder being exported" if out == src else f"{src}, the folder being exported"
    raise ExportError(f"out_dir {out} {where} {what}; writing there could replace the checkpoints or weights the "
                      "export is made from, so choose an out_dir outside it")
