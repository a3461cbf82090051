"""A comparison protocol (configs/compare/*.yaml): the arms, the learning-rate sweep, the seeds, and the `tnl train` /
`tnl evaluate` overrides every arm shares, read into typed objects with one-line errors for bad values."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tnl.errors import UserError

SPLITS = ("validation", "test")
TABLES = ("main", "ablation")
_ARM_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class ProtocolError(UserError):
    """A protocol file that cannot be used as written."""


@dataclass(frozen=True)
class Arm:
    """One model variant: its own `tnl train` overrides on top of the protocol's."""

    name: str
    label: str
    table: str  # "main" (mean ± std over seeds) or "ablation"
    train: tuple[str, ...]
    change: str = ""  # what differs from the baseline, for the ablation table
    stream: bool = False  # also evaluate with the recurrent state (TNL mixers only)
    num_seeds: int | None = None  # how many of the protocol's seeds (None: all for main arms, 1 for ablations)
    paper: tuple[float, float] | None = None  # the paper's word perplexity on WT-103 (valid, test)

    def seeds(self, seeds: tuple[int, ...]) -> tuple[int, ...]:
        n = self.num_seeds if self.num_seeds is not None else (len(seeds) if self.table == "main" else 1)
        return seeds[:n]


@dataclass(frozen=True)
class Protocol:
    name: str
    path: Path
    output_dir: Path  # absolute: one run folder per arm, learning rate and seed below it
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]  # the learning-rate sweep runs on the first; the others at each arm's best rate
    train: tuple[str, ...]
    evaluate: tuple[str, ...]
    splits: tuple[str, ...]
    arms: tuple[Arm, ...]
    description: str = ""
    baseline: str | None = None  # the arm the ablations are compared with
    extra: dict[str, Any] = field(default_factory=dict)  # command-line changes (e.g. max_steps), for the report

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ProtocolError(f"no arm {name!r} in {self.path}; the arms are {', '.join(a.name for a in self.arms)}")

    def run_dir(self, arm: Arm, lr: float, seed: int) -> Path:
        return self.output_dir / arm.name / f"lr{lr:g}-seed{seed}"

    def train_overrides(self, arm: Arm, lr: float, seed: int) -> list[str]:
        """The `tnl train` command line of one run: the protocol's overrides, the arm's, then this run's."""
        steps = [f"train.max_steps={self.extra['max_steps']}"] if "max_steps" in self.extra else []
        return [*self.train, *arm.train, *steps, f"optim.lr={lr:g}", f"train.seed={seed}",
                f"output_dir={self.run_dir(arm, lr, seed)}", f"name={arm.name}"]


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{where} must be a list of override strings (key=value), got {value!r}")
    return tuple(value)


def _arm(name: str, spec: Any, where: str) -> Arm:
    if not _ARM_NAME.match(str(name)):
        raise ProtocolError(f"{where}: arm name {name!r} must be lower-case letters, digits and _")
    if not isinstance(spec, dict):
        raise ProtocolError(f"{where}.{name} must be a mapping (label, table, train, ...)")
    unknown = set(spec) - {"label", "table", "train", "change", "stream", "seeds", "paper"}
    if unknown:
        raise ProtocolError(f"{where}.{name} has unknown keys {sorted(unknown)}; "
                            "use label, table, train, change, stream, seeds, paper")
    table = spec.get("table", "ablation")
    if table not in TABLES:
        raise ProtocolError(f"{where}.{name}.table must be one of {', '.join(TABLES)}, got {table!r}")
    seeds = spec.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ProtocolError(f"{where}.{name}.seeds (how many of the protocol's seeds) must be >= 1, got {seeds!r}")
    paper = spec.get("paper")
    if paper is not None:
        if not (isinstance(paper, list) and len(paper) == 2 and all(isinstance(v, (int, float)) for v in paper)):
            raise ProtocolError(f"{where}.{name}.paper must be [valid, test] word perplexities, got {paper!r}")
        paper = (float(paper[0]), float(paper[1]))
    return Arm(name=str(name), label=str(spec.get("label", name)), table=table,
               train=_str_list(spec.get("train"), f"{where}.{name}.train"), change=str(spec.get("change", "")),
               stream=bool(spec.get("stream", False)), num_seeds=seeds, paper=paper)


def load_protocol(path: str | Path, output_dir: str | Path | None = None, max_steps: int | None = None) -> Protocol:
    """Read and check a protocol file. `output_dir` replaces the file's; `max_steps` changes the token budget (the
    runs then go to a folder of their own, the file's `<output_dir>-steps<N>` unless `output_dir` is given, so
    different budgets never mix)."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"protocol file {path} not found; the protocols are in configs/compare/")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ProtocolError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path} must hold a mapping (name, lrs, seeds, train, evaluate, arms)")
    known = {"name", "description", "output_dir", "lrs", "seeds", "train", "evaluate", "splits", "arms", "baseline"}
    unknown = set(raw) - known
    if unknown:
        raise ProtocolError(f"{path} has unknown keys {sorted(unknown)}; use {', '.join(sorted(known))}")
    lrs = raw.get("lrs")
    if not isinstance(lrs, list) or not lrs or not all(isinstance(v, (int, float)) and v > 0 for v in lrs):
        raise ProtocolError(f"{path}: lrs must be a non-empty list of positive learning rates, got {lrs!r}")
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(v, int) and v >= 0 for v in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ProtocolError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    splits = raw.get("splits", list(SPLITS))
    if not isinstance(splits, list) or not splits or any(s not in SPLITS for s in splits):
        raise ProtocolError(f"{path}: splits must be a list of {' and '.join(SPLITS)}, got {splits!r}")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise ProtocolError(f"{path}: arms must be a mapping of arm name -> {{label, table, train, ...}}")
    arms = tuple(_arm(name, spec, "arms") for name, spec in arms_raw.items())
    name = str(raw.get("name") or path.stem)
    out = Path(output_dir if output_dir is not None else raw.get("output_dir") or f"outputs/compare/{name}")
    extra: dict[str, Any] = {}
    if max_steps is not None:
        if max_steps < 1:
            raise ProtocolError(f"--steps must be >= 1, got {max_steps}")
        extra["max_steps"] = max_steps
        if output_dir is None:
            out = out.with_name(f"{out.name}-steps{max_steps}")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in arms_raw:
        raise ProtocolError(f"{path}: baseline {baseline!r} is not one of the arms")
    return Protocol(name=name, path=path, output_dir=out.expanduser().absolute(),
                    lrs=tuple(float(v) for v in lrs), seeds=tuple(seeds),
                    train=_str_list(raw.get("train"), "train"), evaluate=_str_list(raw.get("evaluate"), "evaluate"),
                    splits=tuple(splits), arms=arms, description=str(raw.get("description", "")).strip(),
                    baseline=baseline, extra=extra)
