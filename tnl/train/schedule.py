"""Learning-rate schedules as multipliers of the peak lr, for torch's LambdaLR.

cosine: linear warmup, then cosine to min_lr_ratio. wsd: warmup, stable, then linear decay over the last
decay_fraction of steps (Hu et al. 2024, MiniCPM). inverse_sqrt: warmup, then sqrt(warmup / step)
(Vaswani et al. 2017; the TNL paper's WikiText-103 setting). linear: warmup, then linear to min_lr_ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "wsd", "inverse_sqrt", "linear", "constant")


def lr_multiplier(name: str, max_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1,
                  decay_fraction: float = 0.2) -> Callable[[int], float]:
    if name not in SCHEDULES:
        raise ValueError(f"unknown scheduler.name '{name}'; choose one of {', '.join(SCHEDULES)}")
    warmup = max(0, warmup_steps)

    def fn(step: int) -> float:  # step = number of optimizer steps already taken
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / (step + 1))
        span = max(1, max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        if name == "cosine":
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "linear":
            return 1 - (1 - min_lr_ratio) * progress
        decay_start = max_steps - int(decay_fraction * max_steps)  # wsd
        if step < decay_start:
            return 1.0
        return 1 - (1 - min_lr_ratio) * min(1.0, (step - decay_start) / max(1, max_steps - decay_start))

    return fn
