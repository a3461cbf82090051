"""docs/results.md from the finished runs of a protocol: the protocol, the main table (mean ± std over seeds), the
paper's numbers beside ours, the ablations, the learning-rate sweep, device, versions, times, and two plots. Only
what ran is shown: an arm without a finished run is listed as not run. The section sits between
`<!-- compare NAME -->` markers, so other sections of the file (the speed benchmark's) stay as they are."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tnl.atomic import write_text_atomic

from .plots import draw_bars, draw_curves
from .protocol import Arm, Protocol
from .runs import Run, best_lr, find_run, run_seconds, sweep_runs, train_summary, validation_curve


@dataclass
class ArmResult:
    arm: Arm
    lr: float | None = None
    val_loss: float | None = None
    runs: list[Run] = field(default_factory=list)  # finished runs at the chosen rate, one per seed
    sweep: list[Run] = field(default_factory=list)

    def values(self, split: str, mode: str, key: str) -> list[float]:
        out = []
        for run in self.runs:
            ev = run.evaluation(split, mode)
            if ev is not None and ev.get(key) is not None:
                out.append(float(ev[key]))
        return out

    def evaluated(self) -> bool:
        return any(self.values(split, "window", "word_perplexity") for split in ("validation", "test"))

    def rates_swept(self) -> int:
        """How many sweep rates have finished (trained or diverged)."""
        return sum(run.status in ("done", "diverged") for run in self.sweep)

    def lr_cell(self) -> str:
        """The chosen rate; while the sweep is incomplete, of how many rates it is the best so far."""
        done, total = self.rates_swept(), len(self.sweep)
        return f"{self.lr:g}" + (f" (best of {done} of {total} rates)" if done < total else "")

    def missing(self) -> str:
        """What the tables say for an arm without an evaluation."""
        return "trained, not evaluated yet" if self.runs else "not run"


def collect(protocol: Protocol) -> list[ArmResult]:
    results = []
    for arm in protocol.arms:
        res = ArmResult(arm, sweep=sweep_runs(protocol, arm))
        chosen = best_lr(protocol, arm)
        if chosen is not None:
            res.lr, res.val_loss = chosen
            res.runs = [r for r in (find_run(protocol, arm, res.lr, s) for s in arm.seeds(protocol.seeds))
                        if r.status == "done"]
        results.append(res)
    return results


def mean_std(values: list[float], decimals: int) -> str:
    """"m ± s" (sample std) over two or more values, "m" for one, "–" for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{statistics.mean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def count_parameters(folder: Path) -> int | None:
    """Parameters of the run's model (from its model_config.json, built on the meta device: no memory, no init)."""
    path = folder / "model_config.json"
    if not path.is_file():
        return None
    import torch

    from tnl.model import TransnormerConfig, TransnormerForCausalLM

    fields = json.loads(path.read_text(encoding="utf-8"))
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        fields.pop(key, None)
    try:
        with torch.device("meta"):
            model = TransnormerForCausalLM(TransnormerConfig(**fields))
    except Exception:  # a model config this version cannot build: leave the column empty rather than fail
        return None
    return sum(p.numel() for p in model.parameters())


def _jobs(run: Run) -> int:
    return int(run.record.get("jobs", 1))


def _side_by_side(results: list[ArmResult]) -> bool:
    return any(_jobs(run) > 1 for res in results for run in res.sweep + res.runs)


def _alone(minutes: str, runs: list[Run], side_by_side: bool) -> str:
    """Beside runs that shared the device, mark the minutes of runs that had it to themselves: they are shorter
    for that reason, not because the arm is faster."""
    timed = [r for r in runs if run_seconds(r.record) is not None]
    return minutes + " (alone)" if side_by_side and timed and all(_jobs(r) == 1 for r in timed) else minutes


def _minutes(runs: list[Run], side_by_side: bool) -> str:
    times = [t for t in (run_seconds(r.record) for r in runs) if t is not None]
    return _alone(f"{statistics.mean(times) / 60:.1f}", runs, side_by_side) if times else "–"


def _device_seconds(runs: list[Run]) -> float | None:
    """Seconds in which at least one of the runs was on the device: the union of their spans, each from the start
    of training (`finished` less the training seconds) to the end of its evaluations. Side by side, this is what the
    whole table costs in wall-clock time (a run resumed in a later call counts from where its summed training time
    reaches back, so this errs long). None if a run's record lacks the times."""
    spans = []
    for run in runs:
        finished, seconds = run.record.get("finished"), run_seconds(run.record)
        if finished is None or seconds is None:
            return None
        start = _dt.datetime.fromisoformat(finished).timestamp() - run.record["train_seconds"]
        spans.append((start, start + seconds))
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def _total_time(results: list[ArmResult]) -> str:
    """The runs' time in all and per run (training plus evaluations), as their records give it, apart for runs
    alone on the device and runs side by side, and the device time they took together."""
    seen, timed, alone, shared, jobs = set(), [], [], [], 1
    for res in results:
        for run in res.sweep + res.runs:
            seconds = run_seconds(run.record)
            if run.folder in seen or seconds is None:
                continue
            seen.add(run.folder)
            timed.append(run)
            (shared if _jobs(run) > 1 else alone).append(seconds)
            jobs = max(jobs, _jobs(run))
    if not seen:
        return "no run yet"

    def span(times: list[float]) -> str:
        return f"{min(times) / 60:.1f}-{max(times) / 60:.1f} minutes"

    text = f"{len(seen)} runs, {sum(alone + shared) / 60:.0f} minutes in all (training and evaluation)"
    busy = _device_seconds(timed) if shared else None
    if busy is not None:  # runs side by side overlap: the table's wall-clock cost is less than their sum
        text += f", {busy / 60:.0f} minutes of device time (runs side by side overlap)"
    if alone:
        text += f"; one run alone on the device {span(alone)}"
    if shared:  # side by side, a run's minutes are minutes on a shared device, not its time alone
        text += f"; {span(shared)} each with up to {jobs} runs side by side on one device (`--jobs {jobs}`)"
    return text


def _best_steps(runs: list[Run]) -> str:
    steps = []
    for run in runs:
        summary = train_summary(run.folder)
        best = summary.get("best_step") or (run.best() or (None,))[0]
        if best is not None:
            stopped = " (stopped early)" if summary.get("early_stopped") else ""
            steps.append(f"{best}{stopped}")
    return ", ".join(steps) or "–"


def _run_config(results: list[ArmResult]) -> dict[str, Any]:
    for res in results:
        for run in res.runs + res.sweep:
            path = run.folder / "config.yaml"
            if path.is_file():
                return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {}


def _data_of(cfg: dict[str, Any]) -> tuple[tuple[str, ...], str, str]:
    """(train files, tokenizer kind, tokenizer size) of one run's resolved config."""
    data, tok = cfg.get("data", {}), cfg.get("tokenizer", {})
    files = tuple(data.get("files", {}).get("train") or [data.get("path")])
    return files, str(tok.get("kind", "?")), str(tok.get("vocab_size", "?"))


def _environment(results: list[ArmResult]) -> tuple[str, str]:
    """(device, versions) recorded by the runs, each distinct value once; the tnl commits of runs with the same
    library versions are listed together."""
    devices: list[str] = []
    commits: dict[str, list[str]] = {}  # library versions -> tnl commits
    for res in results:
        for run in res.runs + res.sweep:
            env = run.record.get("environment")
            if not env:
                continue
            if env.get("device") not in devices:
                devices.append(env.get("device"))
            v = ", ".join(f"{k} {env[k]}" for k in ("torch", "triton", "transformers", "python") if env.get(k))
            seen = commits.setdefault(v, [])
            if env.get("commit") and env["commit"] not in seen:
                seen.append(env["commit"])
    versions = [v + (f", tnl {' and '.join(c)}" if c else "") for v, c in commits.items()]
    return "; ".join(d for d in devices if d) or "no run yet", "; ".join(versions) or "–"


def main_table(protocol: Protocol, results: list[ArmResult]) -> str:
    stream = any(r.arm.stream for r in results if r.arm.table == "main")
    head = ["model", "params", "lr", "seeds", "valid word ppl", "test word ppl", "test bits/byte", "test token ppl"]
    head += ["test word ppl, stream"] if stream else []
    head += ["best step", "min per run"]
    side_by_side = _side_by_side(results)
    rows = []
    for res in (r for r in results if r.arm.table == "main"):
        if not res.evaluated():
            rows.append([res.arm.label] + [res.missing()] + ["–"] * (len(head) - 2))
            continue
        params = count_parameters(res.runs[0].folder)
        row = [res.arm.label, f"{params / 1e6:.2f}M" if params else "–", res.lr_cell(),
               str(len(res.runs)),
               mean_std(res.values("validation", "window", "word_perplexity"), 2),
               mean_std(res.values("test", "window", "word_perplexity"), 2),
               mean_std(res.values("test", "window", "bits_per_byte"), 4),
               mean_std(res.values("test", "window", "token_perplexity"), 2)]
        if stream:
            row.append(mean_std(res.values("test", "stream", "word_perplexity"), 2) if res.arm.stream else "n/a")
        row += [_best_steps(res.runs), _minutes(res.runs, side_by_side)]
        rows.append(row)
    return _table(head, rows)


def paper_table(results: list[ArmResult]) -> str:
    rows = []
    for res in (r for r in results if r.arm.paper):
        valid = res.values("validation", "window", "word_perplexity")
        test = res.values("test", "window", "word_perplexity")
        rows.append([res.arm.label, f"{res.arm.paper[0]:.2f}", f"{res.arm.paper[1]:.2f}",
                     f"{statistics.mean(valid):.2f}" if valid else res.missing(),
                     f"{statistics.mean(test):.2f}" if test else res.missing()])
    if not rows:
        return ""
    return _table(["model", "paper: valid", "paper: test", "this protocol: valid", "this protocol: test"], rows)


def ablation_table(protocol: Protocol, results: list[ArmResult]) -> str:
    base = next((r for r in results if r.arm.name == protocol.baseline), None)
    base_test = base.values("test", "window", "word_perplexity") if base else []
    ref = statistics.mean(base_test) if base_test else None
    head = ["arm", "change", "params", "lr", "valid word ppl", "test word ppl",
            f"vs {base.arm.label}" if base else "vs baseline", "test bits/byte",
            "best step", "min per run"]
    side_by_side = _side_by_side(results)
    rows = []
    for res in results:
        if res.arm.table != "ablation" and res.arm.name != protocol.baseline:
            continue
        change = res.arm.change or ("baseline" if res.arm.name == protocol.baseline else "")
        if not res.evaluated():
            rows.append([res.arm.label, change, res.missing()] + ["–"] * (len(head) - 3))
            continue
        test = res.values("test", "window", "word_perplexity")
        params = count_parameters(res.runs[0].folder)
        rel = f"{statistics.mean(test) / ref:.3f}x" if test and ref else "–"
        rows.append([res.arm.label, change, f"{params / 1e6:.2f}M" if params else "–", res.lr_cell(),
                     mean_std(res.values("validation", "window", "word_perplexity"), 2), mean_std(test, 2), rel,
                     mean_std(res.values("test", "window", "bits_per_byte"), 4), _best_steps(res.runs),
                     _minutes(res.runs, side_by_side)])
    return _table(head, rows)


def sweep_table(results: list[ArmResult]) -> str:
    side_by_side = _side_by_side(results)
    rows = []
    for res in results:
        if not any(run.status != "missing" for run in res.sweep):
            continue  # an arm not started: the line under the tables names it
        for run in res.sweep:
            if run.status == "missing":
                rows.append([res.arm.label, f"{run.lr:g}", "not run"] + ["–"] * 4)
                continue
            best = run.best()
            summary = train_summary(run.folder)
            secs = run.record.get("train_seconds")
            rows.append([res.arm.label, f"{run.lr:g}" + (" (chosen)" if run.lr == res.lr else ""), run.status,
                         f"{best[1]:.4f}" if best else "–", str(best[0]) if best else "–",
                         "yes" if summary.get("early_stopped") else "no" if summary else "–",
                         _alone(f"{secs / 60:.1f}", [run], side_by_side) if secs is not None else "–"])
    return _table(["arm", "lr", "status", "best validation loss", "at step", "stopped early", "train minutes"], rows)


def _table(head: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(no runs yet)"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _budget(cfg: dict[str, Any]) -> str:
    t = cfg.get("train")
    if not t:
        return "the token budget is in the overrides above"
    try:
        per_step = int(t["batch_size"]) * int(t.get("grad_accum", 1)) * int(t["seq_len"])
        total = per_step * int(t["max_steps"])
    except (KeyError, TypeError, ValueError):
        return "–"
    amount = f"{total / 1e6:.1f}M" if total >= 1e6 else f"{total:,}"
    return (f"{t['max_steps']} steps x {t['batch_size'] * t.get('grad_accum', 1)} x {t['seq_len']} tokens = "
            f"{amount} tokens per run (at most: early stopping may end a run sooner)")


def render(protocol: Protocol, results: list[ArmResult], command: str, curves_png: str | None,
           bars_png: str | None) -> str:
    cfg = _run_config(results)
    device, versions = _environment(results)
    data = cfg.get("data", {})
    seeds = ", ".join(str(s) for s in protocol.seeds)
    lines = [f"## Protocol `{protocol.name}`", ""]
    if protocol.description:
        lines += [protocol.description, ""]
    lines += [
        f"`{command}` · {device} · {versions} · {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d}",
        "",
        f"- Training: `{' '.join(protocol.train)}` plus each arm's overrides; {_budget(cfg)}.",
    ]
    differ: list[str] = []
    if data:
        files, kind, vocab = _data_of(cfg)
        # arms may change the tokenizer or the train files (the recipe protocol does): name them, never hide it
        differ = [r.arm.label for r in results if (c := _run_config([r])).get("data") and _data_of(c) != _data_of(cfg)]
        lines.append(f"- Data: train files {', '.join(f'`{f}`' for f in files)}; tokenizer {kind} with {vocab} "
                     "entries, trained on the train split, "
                     + ("the same for every arm except these, which change them as their row says and train their "
                        f"own tokenizer on their own train split: {'; '.join(differ)}." if differ
                        else "the same for every arm."))
    has_main = any(r.arm.table == "main" for r in results)
    multi = len(protocol.seeds) > 1 and has_main
    lines += [
        f"- Learning rates {', '.join(f'{lr:g}' for lr in protocol.lrs)}, the same for every arm, run on seed "
        f"{protocol.seeds[0]}; each arm's rate is the one with the lowest validation loss during training."
        + (f" The main arms then run seeds {seeds} at that rate; the ablations one seed." if multi else ""),
        f"- Evaluation: each run's best checkpoint (lowest validation loss) with `tnl evaluate "
        f"{' '.join(protocol.evaluate)}` on {' and '.join(protocol.splits)}: word perplexity (lm-eval's wikitext "
        "convention), bits per byte and token perplexity, in windows of the training length; TNL arms also "
        "in stream mode (the recurrent state carried through each whole article).",
        f"- Time: {_total_time(results)}.",
        "- Mean ± sample standard deviation over seeds; one value where one seed ran. \"not run\": no finished run "
        "(nothing is filled in by hand).",
        "",
    ]
    if has_main:
        lines += ["### TNL vs Transformer", "", main_table(protocol, results), ""]
    pair = [r for r in results if r.arm.table == "main" and r.values("test", "window", "word_perplexity")]
    base = next((r for r in pair if r.arm.name == protocol.baseline), None)
    for other in (r for r in pair if base is not None and r is not base):
        ratio = (statistics.mean(base.values("test", "window", "word_perplexity"))
                 / statistics.mean(other.values("test", "window", "word_perplexity")))
        paper = (f"; the paper's, full data: {base.arm.paper[1] / other.arm.paper[1]:.3f}"
                 if base.arm.paper and other.arm.paper else "")
        lines.append(f"- {base.arm.label} / {other.arm.label}, test word perplexity: {ratio:.3f}{paper}")
    paper = paper_table(results)
    if paper:
        lines += ["", "### The paper's numbers", "",
                  "The paper trains on the full WT-103 train split (103M words, 50k steps of 128 x 512 tokens: "
                  "`experiment=wt103_tnl_44m` / `wt103_transformer_44m`, `configs/compare/paper.yaml`); the "
                  "columns on the right are this protocol's and are not comparable in absolute terms.", "", paper]
    lines += [""] if lines[-1] else []
    lines += ["### Ablations", "", ablation_table(protocol, results), "",
              "### Learning-rate sweep", "", sweep_table(results), ""]
    if curves_png or bars_png:
        lines += ["### Plots", ""]
        lines += [f"![validation curves]({curves_png})"] if curves_png else []
        lines += [f"![test word perplexity per arm]({bars_png})"] if bars_png else []
        lines.append("")
        if differ and curves_png:  # nats per token of different tokenizers do not compare; words do
            lines += ["Validation losses are per token of each arm's own tokenizer: across tokenizers, compare the "
                      "word perplexities in the tables.", ""]
    not_run = [r.arm.label for r in results if not r.evaluated()]
    if not_run:
        lines.append(f"Not run or not evaluated yet: {'; '.join(not_run)}.")
    return "\n".join(lines)


INTRO = """# Results

Measured results of tnl, each section written by the command it names (`python scripts/compare.py`,
`python -m benchmarks.bench_seq_len --write-md`) from runs that really ran: nothing here is typed in by hand, and an
arm without a finished run reads "not run". Each section gives its command, device, versions and date.
"""


def replace_section(path: Path, key: str, body: str) -> None:
    """Put `body` between `<!-- key -->` and `<!-- /key -->` in `path` (added at the end if absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else INTRO
    start, end = f"<!-- {key} -->\n", f"<!-- /{key} -->"
    block = f"{start}{body.rstrip()}\n{end}"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    text = text[:i] + block + text[j + len(end):] if j >= 0 else text.rstrip() + f"\n\n{block}\n"
    write_text_atomic(path, text)


def write_report(protocol: Protocol, results_md: Path, img_dir: Path, command: str) -> Path:
    """Rewrite the protocol's section of `results_md` and its plots in `img_dir`."""
    results = collect(protocol)
    main = {r.arm.label for r in results if r.arm.table == "main"}
    curves = {}
    for res in results:
        run = next((r for r in res.runs if r.seed == protocol.seeds[0]), res.runs[0] if res.runs else None)
        if run is not None:
            curves[res.arm.label] = validation_curve(run.folder)
    curves_png = draw_curves(curves, main, img_dir / f"compare_{protocol.name}_curves.png",
                             f"validation loss, best learning rate, seed {protocol.seeds[0]}")
    bars = {}
    for res in results:
        test = res.values("test", "window", "word_perplexity")
        if test:
            bars[res.arm.label] = (statistics.mean(test), statistics.stdev(test) if len(test) > 1 else 0.0)
    base = next((r for r in results if r.arm.name == protocol.baseline), None)
    ref = bars.get(base.arm.label, (None,))[0] if base else None
    bars_png = draw_bars(bars, img_dir / f"compare_{protocol.name}_arms.png",
                         f"protocol {protocol.name}: each arm at its best learning rate", ref)

    def rel(p: Path | None) -> str | None:
        return Path(os.path.relpath(p, results_md.parent)).as_posix() if p else None

    body = render(protocol, results, command, rel(curves_png), rel(bars_png))
    replace_section(results_md, f"compare {protocol.name}", body)
    return results_md
