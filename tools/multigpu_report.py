"""What tools/check_multigpu reads back from its runs and how it reports them: losses per step from metrics.jsonl,
their deviation from a reference run, tokens/s per GPU, the final evaluation's files, an export against the
checkpoint it came from, and the markdown table. Pure functions of files, unit-tested on synthetic runs."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---- reading runs (pure: unit-tested on synthetic files) ----

def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def step_losses(rows: list[dict[str, Any]]) -> dict[int, float | None]:
    """{step: training loss} of the training rows (those without `split`)."""
    return {r["step"]: r["loss"] for r in rows if "split" not in r}


@dataclass
class Deviation:
    """How far a run's per-step losses are from a reference run's."""

    max_rel: float  # the largest |loss - reference| / |reference| over the steps both have
    worst_step: int | None
    bit_exact: bool  # the same steps and the same float of every loss
    missing: list[int] = field(default_factory=list)  # reference steps without a finite loss here
    extra: list[int] = field(default_factory=list)  # steps here that the reference lacks

    def ok(self, rtol: float) -> bool:
        return not self.missing and not self.extra and self.worst_step is not None and self.max_rel <= rtol

    def describe(self) -> str:
        if self.missing or self.extra:
            return f"steps differ (missing {self.missing[:5]}, extra {self.extra[:5]})"
        if self.worst_step is None:
            return "no steps"
        if self.bit_exact:
            return "0 (bit for bit)"
        return f"{self.max_rel:.1e} (step {self.worst_step})"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def loss_deviation(reference: dict[int, float | None], got: dict[int, float | None]) -> Deviation:
    """The maximum relative deviation of `got` from `reference` over the reference's steps. A step whose loss is
    missing or not finite (null in metrics.jsonl) in either run is listed in `missing`."""
    missing = sorted(s for s in reference if not (finite(reference[s]) and finite(got.get(s))))
    extra = sorted(set(got) - set(reference))
    worst, worst_step = 0.0, None
    for step in sorted(set(reference) - set(missing)):
        rel = abs(got[step] - reference[step]) / max(abs(reference[step]), 1e-30)
        if worst_step is None or rel > worst:
            worst, worst_step = rel, step
    exact = bool(reference) and not missing and not extra and all(got[s] == reference[s] for s in reference)
    return Deviation(worst, worst_step, exact, missing, extra)


def metrics_deviation(reference: Path, got: Path) -> Deviation:
    """`loss_deviation` of two metrics.jsonl files."""
    return loss_deviation(step_losses(read_rows(reference)), step_losses(read_rows(got)))


def setup_of(rows: list[dict[str, Any]]) -> tuple[str | None, int | None]:
    """(strategy, world size) of the run's last `setup` row: what Accelerate really set up."""
    setups = [r for r in rows if r.get("split") == "setup"]
    return (setups[-1].get("strategy"), setups[-1].get("world_size")) if setups else (None, None)


def tokens_per_s_per_gpu(rows: list[dict[str, Any]], skip: int, world: int) -> float | None:
    """The median over the training rows after step `skip` (compilation and warm-up) of tokens_per_s, which counts
    the tokens of all processes, divided by the number of processes."""
    values = [r["tokens_per_s"] for r in rows
              if "split" not in r and r["step"] > skip and finite(r.get("tokens_per_s"))]
    return statistics.median(values) / world if values else None


def final_eval_problem(run: Path) -> tuple[float | None, str | None]:
    """(word perplexity of the final evaluation, None), or what is missing: eval_validation.json with a finite
    word_perplexity, and the same value in a metrics.jsonl row."""
    path = run / "eval_validation.json"
    if not path.is_file():
        return None, "no eval_validation.json"
    ppl = json.loads(path.read_text()).get("word_perplexity")
    if not finite(ppl):
        return None, f"word_perplexity {ppl!r} in eval_validation.json"
    logged = [r["word_perplexity"] for r in read_rows(run / "metrics.jsonl") if "word_perplexity" in r]
    if not logged:
        return ppl, "no metrics.jsonl row with word_perplexity"
    if logged[-1] != ppl:
        return ppl, f"metrics.jsonl says word_perplexity {logged[-1]}, eval_validation.json {ppl}"
    return ppl, None


def evaluated_checkpoint(run: Path) -> Path | None:
    """The checkpoint whose weights the final evaluation and export used: the summary row's `evaluated_step`, as
    step_N or as checkpoints/best."""
    from tnl.checkpoint import BEST, checkpoint_state

    summary = [r for r in read_rows(run / "metrics.jsonl") if r.get("split") == "summary"]
    if not summary:
        return None
    step = summary[-1].get("evaluated_step")
    for folder in (run / "checkpoints" / f"step_{step}", run / "checkpoints" / BEST):
        if folder.is_dir() and checkpoint_state(folder).get("step") == step:
            return folder
    return None


def export_mismatch(export: Path, checkpoint: Path) -> str | None:
    """None when the export's safetensors weights equal the checkpoint's (FSDP shards consolidated) name by name,
    dtype and bits; else what differs. A name on one side only must be a tied weight: a tensor equal to one under
    another name on the other side (each format saves tied weights once, or under both names)."""
    import torch
    from safetensors.torch import load_file

    from tnl.checkpoint import read_state_dict, strip_wrappers, weight_files

    files = weight_files(export)
    if not files:
        return f"no weights in {export}"
    exported: dict[str, torch.Tensor] = {}
    for f in files:
        exported.update(load_file(str(f)))
    source = weight_files(checkpoint, fsdp=True)
    if not source:
        return f"no weights in {checkpoint}"
    saved = strip_wrappers(read_state_dict(source))
    for name in sorted(set(exported) ^ set(saved)):
        tensor, other = (exported[name], saved) if name in exported else (saved[name], exported)
        if not any(t.shape == tensor.shape and torch.equal(t, tensor) for t in other.values()):
            where = "export" if name in exported else "checkpoint"
            return f"{name} is in the {where} only"
    for name in sorted(set(exported) & set(saved)):
        a, b = exported[name], saved[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{name}: {a.dtype} {tuple(a.shape)} in the export, {b.dtype} {tuple(b.shape)} in the checkpoint"
        if not torch.equal(a, b):
            return f"{name} differs (max |diff| {(a.float() - b.float()).abs().max().item():.3g})"
    return None


# ---- the table ----

@dataclass
class Cell:
    text: str
    ok: bool | None = None  # None: a value to read, not a check


@dataclass
class Report:
    columns: dict[str, str]  # strategy -> column title
    rows: dict[str, dict[str, Cell]] = field(default_factory=dict)  # check -> strategy -> cell
    notes: list[str] = field(default_factory=list)

    def add(self, check: str, strategy: str, text: str, ok: bool | None = None) -> None:
        self.rows.setdefault(check, {})[strategy] = Cell(text, ok)

    @property
    def failed(self) -> list[str]:
        return [f"{check} ({self.columns.get(s, s)}): {cell.text}" for check, cells in self.rows.items()
                for s, cell in cells.items() if cell.ok is False]

    def markdown(self) -> str:
        def show(cell: Cell | None) -> str:
            if cell is None:
                return "–"
            return cell.text + {True: " ✓", False: " ✗", None: ""}[cell.ok]

        lines = ["| check | " + " | ".join(self.columns.values()) + " |",
                 "|---" * (len(self.columns) + 1) + "|"]
        lines += [f"| {check} | " + " | ".join(show(cells.get(s)) for s in self.columns) + " |"
                  for check, cells in self.rows.items()]
        return "\n".join(lines + [""] + self.notes)


def column_titles(strategies: Sequence[str], nproc: int, cpu: bool) -> dict[str, str]:
    unit = "CPU process" if cpu else "GPU"
    many = f"{nproc} {unit}{'es' if cpu and nproc > 1 else 's' if nproc > 1 else ''}"
    titles = {"single": f"1 {unit}", "ddp": f"DDP ({many})", "fsdp": f"FSDP ({many})"}
    return {s: titles[s] for s in strategies}
