"""Training: config schema, loop, metrics, schedules, plots (checkpoints: `tnl.checkpoint`).

The names below load on first use (PEP 562), so the torch-only submodules (`tnl.train.compile`, `flops`,
`schedule`) import without Hydra/OmegaConf: the benchmark scripts use them on machines that lack those."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"TNLConfig": ".config", "register_schema": ".config", "FinishedRun": ".loop", "TrainError": ".loop",
            "train": ".loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
