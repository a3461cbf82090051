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
    check_overrides(config_name, sys.argv[1:])
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(task)()


_MULTIRUN_FLAGS = ("-m", "--multirun")


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose the config with the command line's overrides first, so that a misspelt key, a value of the wrong
    type or an unknown group option is one `error:` line with exit 2 (Hydra's own report spans several lines).
    A sweep (-m) composes every point of it and runs the config's start checks (its Hydra callbacks'
    `on_run_start`: the value checks of a single run) on each, so a bad swept value is refused before any job
    starts. Other flags (--help, --cfg, ...) and hydra.* overrides are left to Hydra."""
    flags = [arg for arg in args if arg.startswith("-")]
    if any(flag not in _MULTIRUN_FLAGS for flag in flags):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in args if not a.startswith("-") and not a.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            if not flags:
                compose(config_name, overrides=overrides)
                return
            for point in sweep_points(overrides):
                cfg = compose(config_name, overrides=point, return_hydra_config=True)
                _start_checks(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        if settings.debug():
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The override list of each job of a basic sweep (the product of every swept key's values, as Hydra's basic
    sweeper forms it); sweeps of a kind that sweeper cannot list (intervals) are left out of the check."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    per_key: list[list[str]] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            per_key.append([f"{key}={override.get_value_element_as_str()}"])
        elif override.is_discrete_sweep():
            per_key.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    return [list(point) for point in itertools.product(*per_key)]


def _start_checks(cfg: Any) -> None:
    """What a single run checks at start: the `on_run_start` of the config's Hydra callbacks (they exit 2 with one
    line on a bad value)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for callback in (OmegaConf.select(cfg, "hydra.callbacks") or {}).values():
        instantiate(callback).on_run_start(config=cfg)


def _one_line(err: BaseException) -> str:
    """Hydra's message and its cause on one line, without the config search path and OmegaConf's key dump."""
    parts: list[str] = []
    listing = False  # after "Available options in 'model':" come the options, one a line
    for exc in (err, err.__cause__):
        for line in str(exc or "").splitlines():
            line = line.strip().rstrip(".")
            if line.startswith(("Config search path", "provider=")):
                break
            if not line or line.startswith(("full_key:", "object_type=", "reference_type=")) or line in parts:
                continue
            if listing:
                parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
            else:
                parts.append(line)
                listing = line.endswith(":")
    return "; ".join(parts)
