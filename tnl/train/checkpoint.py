"""Checkpoints: atomic, checksummed folders `checkpoints/step_N/`, the last K kept.

Accelerate's `save_state` writes model weights (safetensors), optimizer, scheduler and every process's
RNG states; we add `trainer_state.json` (step, tokens, sampler position, ...) and `checksums.json`
(sha256 of every file, written last). Everything goes into a temporary folder renamed into place, so a
crash mid-save leaves the previous checkpoints untouched and never a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

_STEP = re.compile(r"^step_(\d+)$")
CHECKSUMS = "checksums.json"
STATE = "trainer_state.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path) -> None:
    """checksums.json: the sha256 of every file in `folder`, which `verify` checks before a checkpoint is used."""
    sums = {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of finished checkpoints under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found, reverse=True)


def verify(folder: Path) -> str | None:
    """None when every file matches its checksum, else what is wrong."""
    sums_path = folder / CHECKSUMS
    if not sums_path.exists():
        return "no checksums.json (the save did not finish)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return "checksums.json is corrupt"
    for name, digest in sums.items():
        path = folder / name
        if not path.exists():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def latest_valid(root: Path, log=print) -> Path | None:
    """Newest checkpoint that verifies; broken newer ones are reported and skipped."""
    for _step, folder in list_checkpoints(root):
        problem = verify(folder)
        if problem is None:
            return folder
        log(f"WARNING: checkpoint {folder} is unusable ({problem}); trying the previous one")
    return None


def save_checkpoint(accelerator, root: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Save on all ranks (collective), publish atomically on rank 0, prune to the last `keep_last`."""
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        write_checksums(tmp)
        _fsync_dir(tmp)
        if final.exists():  # same step saved again (e.g. signal right after a periodic save)
            old = root / f".old_step_{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        for _s, folder in list_checkpoints(root)[max(1, keep_last):]:
            shutil.rmtree(folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state."""
    accelerator.load_state(str(folder))
    return json.loads((folder / STATE).read_text())


def _fsync_dir(path: Path) -> None:
    for p in [path, *[q for q in path.iterdir() if q.is_file()]] if path.is_dir() else []:
        try:
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass
