"""Training: config schema, loop, checkpoints, metrics, schedules, plots."""

from .config import TNLConfig, register_schema
from .loop import TrainError, train

__all__ = ["TNLConfig", "TrainError", "register_schema", "train"]
