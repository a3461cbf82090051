"""Process-wide developer overrides from the environment: the one module of tnl that reads `os.environ`.

What a user chooses per run or per model lives in typed config (the Hydra schema in `tnl/train/config.py`, the model
config in `tnl/model/configuration_transnormer.py`). The variables below only change where tnl keeps its caches and
how it debugs; `docs/kernels.md` lists them in one table. This file imports the standard library alone, so an
exported model (which carries a copy) loads without tnl.
"""

from __future__ import annotations

import os
from pathlib import Path

# name -> what it does (the table in docs/kernels.md says the same)
VARIABLES = {
    "TNL_CACHE_DIR": "root of tnl's caches: tokenizers, token arrays, kernel tuning (default ~/.cache/tnl)",
    "TNL_DATA_DIR": "local folder of the data files named in configs/data/*.yaml, read when data.path is unset",
    "TNL_AUTOTUNE": "kernel tuning: 1 (default) tune once per shape and GPU, 0 never (cached or shipped choices, "
                    "else the first), retune ignore every cached result",
    "TNL_DEBUG": "1: a user error prints its traceback instead of one line",
}
AUTOTUNE_MODES = ("1", "0", "retune")


class SettingError(ValueError):
    """An environment variable of tnl's holds a value it does not accept."""


def cache_dir() -> Path:
    """Root of tnl's caches: `$TNL_CACHE_DIR`, else `$XDG_CACHE_HOME/tnl`, else `~/.cache/tnl`."""
    root = os.environ.get("TNL_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tnl"


def data_dir() -> str | None:
    """`$TNL_DATA_DIR`: where data files are read from when a data config's `path` is unset (None: the hub)."""
    return os.environ.get("TNL_DATA_DIR") or None


def autotune_mode() -> str:
    """`$TNL_AUTOTUNE`: "1" (default), "0" or "retune"."""
    mode = os.environ.get("TNL_AUTOTUNE", "1") or "1"
    if mode not in AUTOTUNE_MODES:
        raise SettingError(f"TNL_AUTOTUNE={mode!r} is not one of {', '.join(AUTOTUNE_MODES)}; unset it for the default")
    return mode


def debug() -> bool:
    """`$TNL_DEBUG=1`: user errors raise with their traceback."""
    return os.environ.get("TNL_DEBUG") == "1"


def triton_interpret() -> bool:
    """Triton's own `TRITON_INTERPRET=1` (kernels run on the CPU interpreter); read here so tnl reads it once."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def launch() -> tuple[int, bool]:
    """What the launcher asked for: the number of processes it started (torchrun's WORLD_SIZE) and whether it asked
    for FSDP (`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP), so training can refuse a setup that
    Accelerate fell back from."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        world = 1
    return world, os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
