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

from tnl.checkpoint import (
    BEST,
    checkpoint_state,
    load_run_checkpoint,
    load_weights,
    read_state_dict,
    strip_wrappers,
    weight_files,
)

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


def final_model(model: Any, root: Path, best: BestTracker, keep_best: bool, step: int, device: torch.device,
                autocast_dtype: torch.dtype | None, log) -> tuple[Any, int | None]:
    """The model the final evaluation and export use, and the step of its weights when that is not the last one.

    The best checkpoint (`root/best`) is chosen when keep_best is on and it is not the last step; without a
    matching checkpoint (a run resumed past a best saved by an abandoned continuation) the last step stays.
    Unsharded weights are loaded into `model` itself. Sharded (FSDP) ones are not whole on any one process, so a
    whole model is rebuilt from the chosen checkpoint in this process, as `tnl evaluate` would load it: it evaluates
    and exports without the other processes (no collective to wait for) and equals the consolidated weights. Its
    forward runs under autocast to `autocast_dtype`, as Accelerate's wrapper runs the trained model's, so the final
    evaluation scores in the same precision whatever the strategy."""
    folder = root / BEST
    chosen = keep_best and best.best_step is not None and best.best_step != step
    if chosen and checkpoint_state(folder).get("step") != best.best_step:
        log(f"WARNING: no checkpoint of the best step {best.best_step} in {folder}; the final evaluation and export "
            f"use the last step ({step})")
        chosen = False
    source = folder if chosen else root / f"step_{step}"
    evaluated = best.best_step if chosen else None
    files = weight_files(source)
    if files:
        if chosen:
            with torch.no_grad():
                load_weights(model, strip_wrappers(read_state_dict(files)), source)
    elif weight_files(source, fsdp=True):
        model = load_run_checkpoint(source).model.to(device)
        if autocast_dtype is not None:
            model.forward = torch.autocast(device.type, dtype=autocast_dtype)(model.forward)
        log(f"final evaluation and export: the sharded weights of {source} consolidated in this process")
    if chosen:
        log(f"final evaluation and export use the best checkpoint: step {best.best_step} (validation loss "
            f"{best.best_val_loss:.4f})")
    return model, evaluated
