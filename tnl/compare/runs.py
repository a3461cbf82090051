"""What a comparison run folder holds, read back: the runner's record (`compare.json`), the validation curve of
`metrics.jsonl`, and the evaluations (`eval_<split>_<mode>.json`). The runner and the report both read runs here,
so the report shows exactly what the runner chose."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnl.atomic import write_text_atomic

from .protocol import Arm, Protocol

RECORD = "compare.json"
SMALL_FILES = ("*.json", "metrics.jsonl", "config.yaml", "train.log")  # a run's results, no checkpoints


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_record(folder: Path) -> dict[str, Any]:
    return read_json(folder / RECORD) or {}


def run_seconds(record: dict[str, Any]) -> float | None:
    """A run's seconds of training plus evaluations, as its record gives them (None: it has not trained)."""
    if record.get("train_seconds") is None:
        return None
    return record["train_seconds"] + sum(record.get("eval_seconds", {}).values())


def update_record(folder: Path, **changes: Any) -> dict[str, Any]:
    record = {**read_record(folder), **changes}
    write_text_atomic(folder / RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def eval_path(folder: Path, split: str, mode: str) -> Path:
    return folder / f"eval_{split}_{mode}.json"


def validation_curve(folder: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of the evaluations during training (fixed windows; not the final document-level
    evaluation, which carries word perplexities)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    curve = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        loss = row.get("val_loss", row.get("loss")) if row.get("split") == "validation" else None
        if loss is not None and "word_perplexity" not in row and math.isfinite(loss):
            curve.append((int(row["step"]), float(loss)))
    return curve


@dataclass
class Run:
    """One (arm, learning rate, seed) run as found on disk."""

    arm: Arm
    lr: float
    seed: int
    folder: Path
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """"done" (trained), "diverged" (stopped by non-finite steps), "started" (a folder, not finished: re-running
        resumes it) or "missing"."""
        if self.record.get("status") in ("done", "diverged"):
            return self.record["status"]
        return "started" if self.folder.exists() else "missing"

    def best(self) -> tuple[int, float] | None:
        """(step, loss) of the lowest validation loss during training; None if there is none."""
        curve = validation_curve(self.folder)
        return min(curve, key=lambda sl: (sl[1], sl[0])) if curve else None

    def evaluation(self, split: str, mode: str) -> dict[str, Any] | None:
        return read_json(eval_path(self.folder, split, mode))


def find_run(protocol: Protocol, arm: Arm, lr: float, seed: int) -> Run:
    folder = protocol.run_dir(arm, lr, seed)
    return Run(arm, lr, seed, folder, read_record(folder))


def sweep_runs(protocol: Protocol, arm: Arm) -> list[Run]:
    """The arm's learning-rate sweep: every rate of the protocol (and any other found on disk) at the first seed."""
    seed = protocol.seeds[0]
    lrs = list(protocol.lrs)
    root = protocol.output_dir / arm.name
    if root.is_dir():  # rates run with --lrs beyond the protocol's still count, and are shown as such
        for folder in sorted(root.glob(f"lr*-seed{seed}")):
            try:
                lr = float(folder.name[2:].rsplit("-seed", 1)[0])
            except ValueError:
                continue
            if all(f"{lr:g}" != f"{x:g}" for x in lrs):
                lrs.append(lr)
    return [find_run(protocol, arm, lr, seed) for lr in sorted(lrs)]


def best_lr(protocol: Protocol, arm: Arm) -> tuple[float, float] | None:
    """(learning rate, its lowest validation loss) of the arm's finished sweep runs; None if none has finished.
    A diverged rate is never chosen; equal losses go to the smaller rate."""
    scored = []
    for run in sweep_runs(protocol, arm):
        best = run.best() if run.status == "done" else None
        if best is not None:
            scored.append((best[1], run.lr))
    if not scored:
        return None
    loss, lr = min(scored)
    return lr, loss


def train_summary(folder: Path) -> dict[str, Any]:
    """The last `split: summary` row of metrics.jsonl (best step, the evaluated step, early stopping), or {}."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return {}
    found: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if '"summary"' in line:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("split") == "summary":
                found = row
    return found


def copy_small_files(folder: Path, output_dir: Path, dest: Path) -> None:
    """Copy a run folder's small files (record, metrics, evaluations, config; no checkpoints) to the same relative
    path under `dest`, from where `--report --output-dir DEST` rebuilds the report."""
    import shutil

    target = dest / folder.relative_to(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    for pattern in SMALL_FILES:
        for path in folder.glob(pattern):
            shutil.copy2(path, target / path.name)
