"""The `tnl` commands (`tnl train`, `evaluate`, `export`, `prepare-data`): each reads one Hydra config of the
repository's configs/ folder plus the command line's overrides, and composes the library layers below it.

`tnl.cli` dispatches to them; train.py and scripts/*.py are shims that call the same `main` functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tnl import settings
from tnl.errors import UserError

# configs/ lives beside the package (the repository root, installed with `pip install -e .`)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def run_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`; a user's mistake (UserError) prints one line and exits 2, without a traceback
    (TNL_DEBUG=1 shows the traceback)."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        if settings.debug():
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def hydra_entry(task: Callable[[Any], Any], config_name: str) -> None:
    """Run `task(cfg)` under Hydra with configs/<config_name>.yaml and the overrides on the command line.

    Hydra names the job after `task`'s module (train, evaluate, ...), as it named it after the old scripts."""
    import hydra

    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        print(f"error: {CONFIG_DIR / config_name}.yaml not found; tnl reads the configs/ folder of its repository, "
              "so install it from a clone with `pip install -e .`", file=sys.stderr)
        sys.exit(2)
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(task)()
