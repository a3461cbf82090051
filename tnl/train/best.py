"""The best checkpoint by validation loss, early stopping and the overfitting warning: bookkeeping done at each
periodic evaluation only (never per step), saved in every checkpoint's trainer state so a resume continues it.

The best weights live in RUN/checkpoints/best/, a complete checkpoint like step_N (atomic, checksummed, with its
trainer state) that `keep_last` never rotates away; the final evaluation and export use it, and so do
`tnl evaluate model_path=RUN` and `load_pretrained(RUN)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tnl.checkpoint import checkpoint_state, load_weights, read_state_dict, strip_wrappers, weight_files

RISING_EVALS = 2  # validation loss rising this many evaluations in a row prints one warning


@dataclass
class BestTracker:
    best_step: int | None = None
    best_val_loss: float | None = None
    evals_since_best: int = 0  # evaluations since the best one (early stopping counts these)
    last_val_loss: float | None = None
    rising: int = 0  # evaluations in a row whose loss rose over the previous one

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for key, value in (state or {}).items():
            if hasattr(self, key):
                setattr(self, key, value)

    def update(self, step: int, val_loss: float) -> tuple[bool, str | None]:
        """Record one evaluation; returns (a new best, a warning line to print or None). A loss that is not
        finite never becomes the best."""
        improved = val_loss == val_loss and val_loss != float("inf") and (
            self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_step, self.best_val_loss, self.evals_since_best = step, val_loss, 0
        else:
            self.evals_since_best += 1
        previous = self.last_val_loss
        self.rising = self.rising + 1 if previous is not None and not val_loss <= previous else 0
        self.last_val_loss = val_loss
        warning = None
        if self.rising == RISING_EVALS:
            warning = (f"WARNING: validation loss rose for {RISING_EVALS} evaluations in a row (now {val_loss:.4f} "
                       f"at step {step}); the best so far is step {self.best_step} ({self.best_val_loss:.4f}). "
                       "The model may be overfitting: train.early_stop_patience stops such a run")
        return improved, warning

    def should_stop(self, patience: int | None) -> bool:
        return bool(patience) and self.best_step is not None and self.evals_since_best >= patience

    def row(self) -> dict[str, Any]:
        """What each evaluation's metrics row carries about the best so far."""
        return {"best_step": self.best_step, "best_val_loss": self.best_val_loss}


def use_best(model: Any, folder: Path, best: BestTracker, keep_best: bool, step: int, log) -> int | None:
    """Load the best checkpoint's weights into `model` for the final evaluation and export; its step, or None
    when the last weights stay (no evaluation yet, keep_best off, the best is the last step, or no matching
    checkpoint: a run resumed past a best saved by an abandoned continuation)."""
    if not keep_best or best.best_step is None or best.best_step == step:
        return None
    if checkpoint_state(folder).get("step") != best.best_step:
        log(f"WARNING: no checkpoint of the best step {best.best_step} in {folder}; the final evaluation and export "
            f"use the last step ({step})")
        return None
    if not weight_files(folder):  # sharded (FSDP) weights: no full state dict to load on one process
        log(f"WARNING: {folder} holds sharded weights; the final evaluation and export use the last step ({step}); "
            f"export the best with `tnl export checkpoint={folder}`")
        return None
    with torch.no_grad():
        load_weights(model, strip_wrappers(read_state_dict(weight_files(folder))), folder)
    log(f"final evaluation and export use the best checkpoint: step {best.best_step} (validation loss "
        f"{best.best_val_loss:.4f})")
    return best.best_step
