"""Run a protocol: each arm's learning-rate sweep on the first seed, its best rate (lowest validation loss) on the
other seeds, then `tnl evaluate` of every run at the best rate. Each run is a normal `tnl train` run folder (its own
lock, resume, best checkpoint), started as a subprocess; finished runs and evaluations are skipped, interrupted ones
resume, so the work can be split over several calls (`--only`, `--seeds`, `--lrs`, `--time-limit`). With `jobs` > 1
runs train side by side (small models leave most of a GPU idle), each command's output in OUTPUT_DIR/logs/: first
the other seeds of arms whose sweep has finished, then the sweep runs of the others, then their other seeds."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .protocol import Arm, Protocol
from .runs import (
    RECORD,
    Run,
    best_lr,
    copy_small_files,
    eval_path,
    find_run,
    read_json,
    read_record,
    run_seconds,
    sweep_runs,
    update_record,
)

DIVERGED = "non-finite steps in a row"  # the training loop's message when it gives up on a run


# run in a child process: a CUDA context opened here would hold GPU memory for as long as the runs train
_PROBE = """
import json, os, platform, torch, transformers
env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
try:
    import triton
    env["triton"] = triton.__version__
except ImportError:
    pass
if torch.cuda.is_available():
    env["device"] = f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
else:
    env["device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
print(json.dumps(env))
"""


def environment(python: str = sys.executable) -> dict[str, Any]:
    """Device and versions of this machine (and the tnl commit, where it is a git clone), recorded with each run."""
    env: dict[str, Any] = {}
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=300)
        env = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        env = {"python": platform.python_version()}
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


STOP_GRACE = 120.0  # seconds a stopped command gets to save its checkpoint and exit before it is killed
# a training run appends to its metrics.jsonl every train.log_every steps; this long without a line is a stuck run
# (a first compiled step of a large model takes a few minutes; a stuck one never ends)
STALL_SECONDS = 900.0


class Finished(NamedTuple):
    """How a command ended: exit status, seconds, its last stderr line, and whether it was stopped as stuck."""

    returncode: int
    seconds: float
    last: str
    stalled: bool = False


def _unchanged_for(path: Path | None, since: float) -> float:
    """Seconds since `path` last changed, counted from `since` at the earliest (a resumed run's file is older than
    its command); 0 while it does not exist: the command has not started its work."""
    try:
        return time.time() - max(path.stat().st_mtime, since) if path is not None else 0.0
    except OSError:
        return 0.0


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to every process of the command (it leads its own process group: its data workers too)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # it ended meanwhile
        pass


class Deadline:
    """`--time-limit`: no new command after it, and a running one is asked to stop (SIGTERM: `tnl train` saves a
    checkpoint and exits), so the work of a time-limited call is kept. SIGTERM, SIGINT and SIGHUP (a closed terminal)
    to this process mean the same: the commands run in their own sessions, so only this process hears them."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds
        self.stopped = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop)

    def _stop(self, _signum, _frame) -> None:
        self.stopped = True

    def passed(self) -> bool:
        return self.stopped or (self.end is not None and time.monotonic() >= self.end)

    def left(self) -> float | None:
        """Seconds until the limit (None: no limit)."""
        return None if self.end is None else max(0.0, self.end - time.monotonic())


@dataclass
class Outcome:
    """What one call did: lines for the final summary, and whether anything failed."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False
    interrupted: bool = False


class Runner:
    def __init__(self, protocol: Protocol, *, deadline: Deadline, dry_run: bool = False, retry_failed: bool = False,
                 eval_each: bool = False, python: str = sys.executable, log: Callable[[str], None] = print,
                 jobs: int = 1, copy_to: Path | None = None, stall_seconds: float = STALL_SECONDS,
                 whole_runs: bool = False):
        self.protocol = protocol
        self.eval_each = eval_each
        self.deadline = deadline
        self.dry_run = dry_run
        self.retry_failed = retry_failed
        self.python = python
        self._write = log
        self._log_lock = threading.Lock()
        self.stop_grace = STOP_GRACE
        self.stall_seconds = stall_seconds  # 0: never
        self.poll_seconds = 5.0  # how often a running command's time limit and progress are checked
        self.jobs = jobs
        self.copy_to = copy_to  # each finished run's small files go here at once (a later kill loses none)
        self.whole_runs = whole_runs  # start a run only when the time left covers the longest finished one
        self.outcome = Outcome()
        self._env: dict[str, Any] | None = None

    def log(self, message: str) -> None:
        """One message, whole: with several jobs, their threads' lines must not interleave."""
        with self._log_lock:
            self._write(message)

    @property
    def env(self) -> dict[str, Any]:
        if self._env is None:
            self._env = environment(self.python)
        return self._env

    def tnl(self, args: Sequence[str], tag: str = "", progress: Path | None = None) -> Finished:
        """`python -m tnl ARGS`: its exit status, seconds and last error line. Its output streams through (with
        several jobs: into OUTPUT_DIR/logs/<tag>.log); its stderr is shown when it ends. `progress`: a file the
        command appends to as it works (a training run's metrics.jsonl); once it exists, `stall_seconds` without a
        change mean the command is stuck: its stacks go to its stderr (SIGUSR1) and it is stopped."""
        cmd = [self.python, "-u", "-m", "tnl", *args]
        self.log("$ python -m tnl " + " ".join(args))
        out = None
        if self.jobs > 1:
            path = self.protocol.output_dir / "logs" / (re.sub(r"[^\w.=-]+", "_", tag) + ".log")
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed below, after the process)
        start, started = time.monotonic(), time.time()
        # its own process group: a kill reaches its workers too, which would otherwise hold its stderr open
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, start_new_session=True)
        asked = None  # when it was asked to stop
        stalled = False
        while True:
            try:
                _, err = proc.communicate(timeout=self.poll_seconds)
                break
            except subprocess.TimeoutExpired:
                if asked is None and self.stall_seconds > 0 and _unchanged_for(progress, started) > self.stall_seconds:
                    self.log(f"{tag}: no progress for {self.stall_seconds:g} s ({progress} unchanged): its stacks "
                             "go to its log (SIGUSR1), then it is stopped")
                    _signal_group(proc, signal.SIGUSR1)  # every process of the command prints where it waits
                    time.sleep(2)
                    proc.send_signal(signal.SIGTERM)
                    asked, stalled = time.monotonic(), True
                elif self.deadline.passed() and asked is None:
                    proc.send_signal(signal.SIGTERM)  # first: after a hangup, printing can fail
                    asked = time.monotonic()
                    self.log("time limit: stopping the running command (a training run saves a checkpoint first; "
                             "re-run to resume)")
                elif asked is not None and time.monotonic() - asked > self.stop_grace:
                    # a command that does not stop (stuck outside its loop) must not hold the whole call; its
                    # checkpoints are atomic, so the last finished one stays usable
                    self.log(f"the command did not stop within {self.stop_grace:g} s: killing it")
                    _signal_group(proc, signal.SIGKILL)
                    asked = float("inf")
        if out is not None:
            out.write(err)
            out.close()
        elif err:
            sys.stderr.write(err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return Finished(proc.returncode, time.monotonic() - start, lines[-1] if lines else "", stalled)

    def train(self, run: Run) -> str:
        """Train `run` unless it is finished; its status afterwards."""
        tag = f"{run.arm.name} lr={run.lr:g} seed={run.seed}"
        status = run.status
        if status == "done" or (status == "diverged" and not self.retry_failed):
            self.log(f"[skip] {tag}: {status}")
            return status
        if self.deadline.passed():
            self.outcome.interrupted = True
            return status
        left = self.deadline.left()
        needs = self.longest_run() if self.whole_runs and left is not None else None
        if needs is not None and left < needs:
            self.log(f"[wait] {tag}: {left:.0f} s left, a run here takes up to {needs:.0f} s (--whole-runs)")
            self.outcome.interrupted = True
            return status
        args = ["train", *self.protocol.train_overrides(run.arm, run.lr, run.seed)]
        if self.dry_run:
            self.log(f"[train] {tag}\n  tnl " + " ".join(args))
            return status
        self.log(f"[train] {tag}" + (" (resuming)" if status == "started" else ""))
        progress = run.folder / "metrics.jsonl"
        rc, seconds, last, stalled = self.tnl(args, f"{tag} train", progress)
        if stalled and not self.deadline.passed():  # once more: a stuck start is rare; it resumes what it saved
            self.log(f"[train] {tag}: stuck, started once more")
            rc, again, last, stalled = self.tnl(args, f"{tag} train", progress)
            seconds += again
        spent = run.record.get("train_seconds", 0.0) + seconds
        if rc == 0:
            run.record = update_record(run.folder, status="done", train_seconds=spent, environment=self.env,
                                       command=["tnl", *args], finished=_now(), jobs=self.jobs)
            self.copy(run)
        elif rc == 2 and DIVERGED in last:
            run.record = update_record(run.folder, status="diverged", train_seconds=spent, error=last,
                                       environment=self.env, command=["tnl", *args], finished=_now())
            self.outcome.lines.append(f"{tag}: diverged ({last})")
        else:
            if run.folder.is_dir():
                run.record = update_record(run.folder, status="started", train_seconds=spent)
            if self.deadline.passed():
                self.outcome.interrupted = True
                self.outcome.lines.append(f"{tag}: stopped at the time limit (re-run to resume)")
            else:
                self.outcome.failed = True
                why = f"stuck twice (no progress for {self.stall_seconds:g} s; its stacks are in its log)" \
                    if stalled else f"tnl train exited {rc}: {last}"
                self.outcome.lines.append(f"{tag}: {why}")
        return run.status

    def evaluate(self, run: Run) -> None:
        """Evaluate the run's best checkpoint (`model_path=<run folder>`) on each split: windows of its training
        length, plus the recurrent stream for arms that have one; evaluations already written are skipped."""
        modes = ["window", "stream"] if run.arm.stream else ["window"]
        if not (run.folder / "checkpoints").is_dir():  # the small files of a run trained elsewhere
            if any(read_json(eval_path(run.folder, s, m)) is None for s in self.protocol.splits for m in modes):
                self.outcome.lines.append(f"{run.arm.name} lr={run.lr:g} seed={run.seed}: not evaluated, and its "
                                          f"checkpoints are not in {run.folder}")
            return
        config = yaml.safe_load((run.folder / "config.yaml").read_text(encoding="utf-8")) \
            if (run.folder / "config.yaml").is_file() else {}
        length = int(config.get("train", {}).get("seq_len", 512))
        for split in self.protocol.splits:
            for mode in modes:
                out = eval_path(run.folder, split, mode)
                tag = f"{run.arm.name} lr={run.lr:g} seed={run.seed} {split} {mode}"
                done = read_json(out)
                if done is not None and "word_perplexity" in done:
                    self.log(f"[skip] evaluate {tag}: {out.name}")
                    continue
                if self.deadline.passed():
                    self.outcome.interrupted = True
                    return
                args = ["evaluate", f"model_path={run.folder}", *self.protocol.evaluate, f"eval.split={split}",
                        f"eval.mode={mode}", f"eval.max_length={length}", f"eval.output={out}", "eval.progress=false"]
                if self.dry_run:
                    self.log(f"[evaluate] {tag}\n  tnl " + " ".join(args))
                    continue
                self.log(f"[evaluate] {tag}")
                rc, seconds, last, _ = self.tnl(args, tag)
                if rc == 0:
                    times = dict(run.record.get("eval_seconds", {}))
                    times[f"{split}_{mode}"] = seconds
                    run.record = update_record(run.folder, eval_seconds=times)
                    self.copy(run)
                elif not self.deadline.passed():
                    self.outcome.failed = True
                    self.outcome.lines.append(f"evaluate {tag}: tnl evaluate exited {rc}: {last}")

    def prepare(self, arms: Sequence[Arm]) -> None:
        """`tnl prepare-data` with each arm's overrides: the first arm's alone, then the others' side by side (they
        mostly differ in model overrides and find the tokenizer and token caches built). Runs started side by side
        then find their caches built, instead of each building the same ones at once."""
        unique: dict[tuple[str, ...], Arm] = {}
        for arm in arms:
            unique.setdefault(("prepare-data", *self.protocol.train, *arm.train), arm)
        items = list(unique.items())
        self.each(self._prepare, items[:1])
        self.each(self._prepare, items[1:])

    def _prepare(self, item: tuple[tuple[str, ...], Arm]) -> None:
        args, arm = item
        if self.dry_run:
            self.log(f"[prepare] {arm.name}\n  tnl " + " ".join(args))
            return
        self.log(f"[prepare] {arm.name}")
        rc, _, last, _ = self.tnl(args, f"{arm.name} prepare-data")
        if rc != 0 and not self.deadline.passed():  # its runs would fail the same way and say so themselves
            self.log(f"[prepare] {arm.name}: tnl prepare-data exited {rc}: {last}")

    def sweep(self, arm: Arm, seeds: Sequence[int] | None, lrs: Sequence[float] | None) -> list[Run]:
        """The arm's learning-rate sweep runs (on the first seed) this call asks for."""
        sweep_seed = self.protocol.seeds[0]
        if seeds is not None and sweep_seed not in seeds:
            return []
        wanted = self.protocol.lrs if lrs is None else tuple(lrs)
        return [find_run(self.protocol, arm, lr, sweep_seed) for lr in wanted]

    def train_sweep_run(self, run: Run) -> None:
        if self.train(run) == "done" and self.eval_each:
            self.evaluate(run)

    def run_arm(self, arm: Arm, seeds: Sequence[int] | None, lrs: Sequence[float] | None) -> None:
        """The arm's sweep, its best rate on the other seeds, then the evaluations at that rate (one job)."""
        for run in self.sweep(arm, seeds, lrs):
            self.train_sweep_run(run)
        for work in self.seed_work(arm, seeds):
            work()

    def seed_work(self, arm: Arm, seeds: Sequence[int] | None) -> list[Callable[[], None]]:
        """One task per seed at the arm's best rate so far: train it (the sweep seed is trained already), then
        evaluate it. None while no sweep run has finished (a line in the outcome says so)."""
        protocol = self.protocol
        sweep_seed = protocol.seeds[0]
        chosen = best_lr(protocol, arm)
        if chosen is None:
            self.outcome.lines.append(f"{arm.name}: no finished learning-rate sweep run at seed {sweep_seed} yet; "
                                      "its other seeds and evaluations wait for one")
            return []
        lr, loss = chosen
        swept = [r for r in sweep_runs(protocol, arm) if r.status == "done"]
        self.log(f"{arm.name}: best learning rate {lr:g} (validation loss {loss:.4f}; "
                 f"{len(swept)} of {len(protocol.lrs)} rates finished)")

        def work(seed: int) -> None:
            run = find_run(protocol, arm, lr, seed)
            if seed != sweep_seed:
                self.train(run)
            if run.status == "done":
                self.evaluate(run)

        return [partial(work, seed) for seed in arm.seeds(protocol.seeds) if seeds is None or seed in seeds]

    def swept(self, arm: Arm, seeds: Sequence[int] | None, lrs: Sequence[float] | None) -> bool:
        """Every rate of the arm's sweep has finished (trained or diverged), those this call asks for included (a
        new `--lrs` rate): its best rate is final."""
        runs = [*sweep_runs(self.protocol, arm), *self.sweep(arm, seeds, lrs)]
        return all(run.status in ("done", "diverged") for run in runs)

    def longest_run(self) -> float | None:
        """Seconds of the protocol's longest finished run, training and evaluations (None: none finished yet)."""
        times = []
        for path in self.protocol.output_dir.glob(f"*/*/{RECORD}"):
            record = read_record(path.parent)
            seconds = run_seconds(record)
            if record.get("status") == "done" and seconds is not None:
                times.append(seconds)
        return max(times, default=None)

    def copy(self, run: Run) -> None:
        if self.copy_to is not None and not self.dry_run:
            copy_small_files(run.folder, self.protocol.output_dir, self.copy_to)

    def each(self, work: Callable[[Any], Any], items: Iterable[Any]) -> None:
        """`work(item)` for each item: in order, or `jobs` at a time; none starts after the time limit."""
        def guarded(item: Any) -> None:
            if self.deadline.passed():
                self.outcome.interrupted = True
            else:
                work(item)

        if self.jobs == 1:
            for item in items:
                guarded(item)
            return
        with ThreadPoolExecutor(self.jobs) as pool:
            for future in [pool.submit(guarded, item) for item in items]:
                future.result()  # an error in a job is raised here

    def run(self, only: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            lrs: Sequence[float] | None = None) -> Outcome:
        arms = [self.protocol.arm(name) for name in only] if only else list(self.protocol.arms)
        if self.jobs == 1:
            self.each(lambda arm: self.run_arm(arm, seeds, lrs), arms)
            return self.outcome
        self.prepare(arms)
        # side by side, one queue: first the other seeds of arms whose sweep has finished (their rate is final),
        # then every other arm's sweep runs, so that each arm's rate is chosen from all of its sweep runs
        ready = [arm for arm in arms if self.swept(arm, seeds, lrs)]
        waiting = [arm for arm in arms if arm not in ready]
        self.each(_call, [work for arm in ready for work in self.seed_work(arm, seeds)]
                  + [partial(self.train_sweep_run, run) for arm in waiting for run in self.sweep(arm, seeds, lrs)])
        self.each(_call, [work for arm in waiting for work in self.seed_work(arm, seeds)])
        return self.outcome


def _call(work: Callable[[], None]) -> None:
    work()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
