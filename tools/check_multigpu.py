"""DDP and FSDP against one GPU, end to end, in one command that prints one markdown table (docs/benchmarks.md) and
exits 1 on any failure:

1. losses per step at the same global batch: 1 GPU (`python train.py`), DDP and FSDP (`accelerate launch` with
   configs/accelerate/{ddp,fsdp}_2gpu.yaml), equal within bf16 tolerance (max relative deviation reported);
2. resume after kill -9: each of DDP and FSDP runs again, is SIGKILLed (launcher and workers) once its first
   checkpoint is complete, is launched again (resume=auto) and must give the losses of its unbroken run;
3. the final evaluation and export of each run: eval_validation.json and a metrics row with word_perplexity, an
   export whose weights equal the checkpoint's (consolidated from FSDP's shards), and `tnl evaluate model_path=RUN`
   on the FSDP run folder;
4. (--scaling on|only) tokens/s per GPU of tnl_385m with train.compile=true at the same per-GPU batch, and the
   efficiency of DDP and FSDP against one GPU (target >= 0.90).

    python -m tools.check_multigpu [--nproc 2] [--scaling off|on|only] [--out DIR] [tnl train overrides ...]

`--nproc 1` runs the DDP and FSDP code paths (launcher, process group, FSDP2's sharded checkpoints and their
consolidation) in one process on one GPU. `--cpu` checks DDP over gloo on CPU processes (torchrun with
ACCELERATE_USE_CPU=1); Accelerate runs FSDP on GPUs only, so FSDP is skipped there. The runs go into a new folder
(default outputs/check_multigpu/<UTC time>); an --out that exists is refused, so nothing already there is touched.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/check_multigpu.py` as well as `python -m tools.check_multigpu`
    sys.path.insert(0, str(ROOT))

from tools.multigpu_report import (  # noqa: E402 (needs the sys.path line above)
    Report,
    column_titles,
    evaluated_checkpoint,
    export_mismatch,
    final_eval_problem,
    finite,
    metrics_deviation,
    read_rows,
    setup_of,
    step_losses,
    tokens_per_s_per_gpu,
)

LOSS_RTOL = 2e-2  # bf16 autocast: the same batches, summed in another order
EVAL_RTOL = 1e-3  # `tnl evaluate` in float32 on the weights and windows of the run's own final evaluation
TARGET_EFFICIENCY = 0.90
STRATEGIES = ("single", "ddp", "fsdp")
SETUP_NAMES = {"single": "single", "ddp": "DDP", "fsdp": "FSDP"}  # the `strategy` of the metrics `setup` row
CONFIGS = {"ddp": "configs/accelerate/ddp_2gpu.yaml", "fsdp": "configs/accelerate/fsdp_2gpu.yaml"}

# parts 1-3: the quickstart model with 2 layers, 20 steps of 512 tokens, 8 sequences per process and micro-batch;
# a checkpoint every 5 steps, so a kill after the first one lands mid-run
SMALL = ["experiment=quickstart", "model.decoder_layers=2", "train.max_steps=20", "train.seq_len=512",
         "train.batch_size=8", "train.mixed_precision=bf16", "scheduler.warmup_steps=5", "train.eval_every=0",
         "train.save_every=5", "train.keep_last=4", "train.log_every=1", "train.progress=false",
         "train.final_eval=true", "train.export=true"]
# part 4: tnl_385m as its experiment trains it (16 x 2048 tokens per GPU, bf16, compiled), 30 steps
SCALING = ["experiment=tnl_385m", "train.max_steps=30", "train.grad_accum=1", "train.compile=true",
           "train.log_every=1", "train.eval_every=0", "train.save_every=0", "train.progress=false",
           "train.final_eval=false", "train.export=false"]


class CheckError(Exception):
    """A refused invocation: printed as one `error: ...` line, exit status 2."""


# ---- launching and killing runs ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(strategy: str, nproc: int, cpu: bool) -> list[str]:
    """The command before train.py's overrides: `python train.py` for one process, else `accelerate launch` with
    the strategy's config (torchrun on CPUs: Accelerate launches several CPU processes through MPI only)."""
    if strategy == "single":
        return [sys.executable, "train.py"]
    port = str(free_port())
    if cpu:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
                "train.py"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIGS[strategy],
            "--num_processes", str(nproc), "--main_process_port", port, "train.py"]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it, as a crashed node would lose them: torchrun starts each
    worker in a session of its own, so killing the launcher's process group alone would leave the workers training.
    The processes are stopped first, so none starts a new child between the listing and the kill."""
    import psutil

    stopped: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(proc.pid)
        while True:
            found = [p for p in (root, *root.children(recursive=True)) if p.pid not in stopped]
            if not found:
                break
            for p in found:
                try:
                    p.suspend()
                except psutil.NoSuchProcess:
                    pass
                stopped[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in stopped.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    # gone (or a zombie: its GPU memory and the run folder's lock are already released), before a relaunch
    deadline, alive = time.monotonic() + 30, list(stopped.values())
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.05)


def _running(p: Any) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def complete_checkpoints(root: Path) -> list[int]:
    """Steps of the published checkpoints (RUN/checkpoints/step_N with checksums.json) under `root`."""
    steps = []
    for folder in root.glob("step_*") if root.is_dir() else []:
        if folder.name[5:].isdigit() and (folder / "checksums.json").is_file():
            steps.append(int(folder.name[5:]))
    return sorted(steps)


class Runner:
    """Runs commands from the repository root, each with its output in LOGS/<name>.log, each under a time limit."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - the child writes it; closed when it ends
        log.write("$ " + shlex.join(cmd) + "\n\n")
        log.flush()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(cmd)}", flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        return proc

    def run(self, name: str, cmd: list[str], timeout: float) -> int:
        """The exit status; 124 after the time limit (the run's processes are then killed)."""
        proc, began = self.start(name, cmd), time.monotonic()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            rc = 124
        print(f"    exit {rc} after {time.monotonic() - began:.0f} s", flush=True)
        if rc != 0:
            print(self.tail(name), flush=True)
        return rc

    def run_and_kill(self, name: str, cmd: list[str], checkpoints: Path,
                     timeout: float) -> tuple[int | None, str | None]:
        """Start `cmd`, SIGKILL all its processes once a first checkpoint is complete; (the newest complete
        checkpoint's step after the kill, None) or (None, what went wrong)."""
        proc, deadline = self.start(name, cmd), time.monotonic() + timeout
        while proc.poll() is None and not complete_checkpoints(checkpoints) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None:
            print(self.tail(name), flush=True)
            return None, f"the run ended (exit {proc.returncode}) before it could be killed"
        if not complete_checkpoints(checkpoints):
            kill_tree(proc)
            return None, f"no checkpoint within {timeout:.0f} s"
        kill_tree(proc)
        steps = complete_checkpoints(checkpoints)
        print(f"    killed (SIGKILL) with checkpoints of steps {steps}", flush=True)
        return steps[-1], None

    def tail(self, name: str, lines: int = 25) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join("    | " + line for line in text[-lines:])


# ---- the checks ----

@dataclass
class Options:
    nproc: int
    cpu: bool
    strategies: list[str]
    scaling: str
    out: Path
    overrides: list[str]
    run_timeout: float | None  # None: 240 s a run for parts 1-3, 420 s for part 4
    scaling_skip: int
    scaling_reference: Path | None = None  # RUN/scaling_single of an earlier check: the 1-GPU tokens/s


def check_runs(opt: Options, runner: Runner, report: Report) -> None:
    """Parts 1-3."""
    total = opt.nproc if opt.nproc >= 2 else 2  # micro-batches of 8 per step, over all processes
    done: dict[str, Path] = {}
    train_args: dict[str, list[str]] = {}
    for s in opt.strategies:
        accum = total if s == "single" else total // opt.nproc
        train_args[s] = [*SMALL, f"train.grad_accum={accum}", *opt.overrides]
        run = opt.out / s
        if runner.run(s, [*launcher(s, opt.nproc, opt.cpu), *train_args[s], f"output_dir={run}"],
                      opt.run_timeout or 240) != 0:
            report.add("run finished", s, f"failed, see {runner.logs.name}/{s}.log", False)
            continue
        done[s] = run
        rows = read_rows(run / "metrics.jsonl")
        strategy, world = setup_of(rows)
        want = (SETUP_NAMES[s], 1 if s == "single" else opt.nproc)
        report.add("setup row (strategy, world size)", s, f"{strategy}, {world}", (strategy, world) == want)
    report.notes.append(f"Parts 1-3: the quickstart model with 2 layers, 20 steps of {8 * total} x 512 tokens "
                        f"(8 sequences per process and micro-batch), bf16, a checkpoint every 5 steps"
                        + (", with the overrides above." if opt.overrides else "."))
    loss_check = f"loss vs {report.columns.get('single', '1 GPU')}, max rel. deviation (tol {LOSS_RTOL:g})"

    if "single" in done:
        for s in done:
            if s == "single":
                report.add(loss_check, s, "reference")
                continue
            dev = metrics_deviation(done["single"] / "metrics.jsonl", done[s] / "metrics.jsonl")
            report.add(loss_check, s, dev.describe(), dev.ok(LOSS_RTOL))

    resumed = {s: check_resume(s, train_args[s], done[s], opt, runner, report) for s in done if s != "single"}

    for s, run in done.items():
        check_outputs(s, run, "", report)
    for s, run in resumed.items():
        if run is not None:
            check_outputs(s, run, "resumed run: ", report)

    target = "fsdp" if "fsdp" in done else "ddp" if "ddp" in done else None
    if target is not None:
        check_evaluate(target, done[target], opt, runner, report)


def check_outputs(s: str, run: Path, prefix: str, report: Report) -> None:
    """Part 3: the final evaluation's files, and the export against the checkpoint it was made from."""
    ppl, problem = final_eval_problem(run)
    report.add(f"{prefix}final eval: word perplexity", s, problem or f"{ppl:.2f}", problem is None)
    checkpoint = evaluated_checkpoint(run)
    mismatch = export_mismatch(run / "export", checkpoint) if checkpoint else "no evaluated checkpoint"
    equal = "equal (shards consolidated)" if s == "fsdp" else "equal"
    report.add(f"{prefix}export weights = checkpoint weights", s, mismatch or equal, mismatch is None)


def check_resume(s: str, train_args: list[str], unbroken: Path, opt: Options, runner: Runner,
                 report: Report) -> Path | None:
    """Part 2: the unbroken run's command into another folder, killed with SIGKILL after its first checkpoint and
    launched again (on another free rendezvous port), against the unbroken run. Returns the run folder once the
    relaunch has finished."""
    run = opt.out / f"{s}_killed"
    cmd = [*train_args, f"output_dir={run}"]
    check = f"resume after kill -9: max rel. deviation vs unbroken run (tol {LOSS_RTOL:g})"
    step, problem = runner.run_and_kill(f"{s}_killed", [*launcher(s, opt.nproc, opt.cpu), *cmd], run / "checkpoints",
                                        opt.run_timeout or 240)
    if problem:
        report.add(check, s, problem, False)
        return None
    max_steps = max(step_losses(read_rows(unbroken / "metrics.jsonl")))
    if step >= max_steps:
        report.add(check, s, f"killed after the last checkpoint (step {step}): nothing to resume; run again", False)
        return None
    if runner.run(f"{s}_resumed", [*launcher(s, opt.nproc, opt.cpu), *cmd], opt.run_timeout or 240) != 0:
        report.add(check, s, f"relaunch failed, see {runner.logs.name}/{s}_resumed.log", False)
        return None
    resumed = "resumed from" in (runner.logs / f"{s}_resumed.log").read_text(errors="replace")
    dev = metrics_deviation(unbroken / "metrics.jsonl", run / "metrics.jsonl")
    text = f"killed at step_{step}: {dev.describe()}" if resumed else "the relaunch did not resume"
    report.add(check, s, text, resumed and dev.ok(LOSS_RTOL))
    return run


def _run_config(run: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def check_evaluate(s: str, run: Path, opt: Options, runner: Runner, report: Report) -> None:
    """Part 3: `tnl evaluate model_path=RUN` in float32 with the run's windows gives the run's final evaluation."""
    check = "`tnl evaluate model_path=RUN`: word perplexity"
    train = _run_config(run)["train"]
    out = opt.out / f"evaluate_{s}.json"
    data = [o for o in opt.overrides if o.lstrip("+~").split("=")[0].split(".")[0] == "data"]
    cmd = [sys.executable, "-m", "tnl", "evaluate", f"model_path={run}", f"eval.max_length={train['seq_len']}",
           f"eval.batch_size={train['batch_size']}", "eval.dtype=float32", "eval.progress=false",
           f"eval.output={out}", *data]
    if runner.run(f"evaluate_{s}", cmd, opt.run_timeout or 240) != 0 or not out.is_file():
        report.add(check, s, f"failed, see {runner.logs.name}/evaluate_{s}.log", False)
        return
    got = json.loads(out.read_text()).get("word_perplexity")
    ref, _ = final_eval_problem(run)
    if not finite(got) or ref is None:
        report.add(check, s, f"{got!r} (final evaluation: {ref!r})", False)
        return
    # FSDP's final evaluation runs on a model rebuilt from the checkpoint, in float32 as here; the others' on the
    # trained model, whose forward Accelerate keeps under its mixed-precision autocast
    rtol = EVAL_RTOL if s == "fsdp" or train.get("mixed_precision") == "no" else LOSS_RTOL
    rel = abs(got - ref) / ref
    report.add(check, s, f"{got:.2f} (rel. diff. to final eval {rel:.1e}, tol {rtol:g})", rel <= rtol)


def check_scaling(opt: Options, runner: Runner, report: Report) -> None:
    """Part 4: tokens/s per GPU at the same per-GPU batch. The 1-GPU figure comes from --scaling-reference (a
    scaling_single folder of an earlier check) where `single` is not among the strategies."""
    per_gpu: dict[str, float] = {}
    if opt.scaling_reference is not None and "single" not in opt.strategies:
        tps = tokens_per_s_per_gpu(read_rows(opt.scaling_reference / "metrics.jsonl"), opt.scaling_skip, 1)
        if tps is None:
            report.add("scaling run finished", "single", f"no tokens_per_s in {opt.scaling_reference}", False)
        else:
            per_gpu["single"] = tps
            report.add("tokens/s per GPU (tnl_385m, compile)", "single", f"{tps:,.0f} (--scaling-reference)")
    for s in opt.strategies:
        name, run = f"scaling_{s}", opt.out / f"scaling_{s}"
        cmd = [*launcher(s, opt.nproc, opt.cpu), *SCALING, *opt.overrides, f"output_dir={run}"]
        if runner.run(name, cmd, opt.run_timeout or 420) != 0:
            report.add("scaling run finished", s, f"failed, see {runner.logs.name}/{name}.log", False)
            continue
        rows = read_rows(run / "metrics.jsonl")
        _strategy, world = setup_of(rows)
        tps = tokens_per_s_per_gpu(rows, opt.scaling_skip, world or 1)
        if tps is None:
            report.add("scaling run finished", s, f"no tokens_per_s after step {opt.scaling_skip}", False)
            continue
        per_gpu[s] = tps
        report.add("tokens/s per GPU (tnl_385m, compile)", s, f"{tps:,.0f}")
    if "single" in per_gpu:
        for s, tps in per_gpu.items():
            eff = tps / per_gpu["single"]
            report.add(f"efficiency: per-GPU tokens/s / 1 GPU's (target >= {TARGET_EFFICIENCY:.2f})", s,
                       f"{eff:.2f}", None if s == "single" else eff >= TARGET_EFFICIENCY)
    report.notes.append(f"Scaling: tnl_385m, train.compile=true, 16 x 2048 tokens per GPU and step, 30 steps; the "
                        f"median of steps {opt.scaling_skip + 1}-30" + (", with the overrides above." if opt.overrides
                                                                         else "."))


# ---- command line ----

def stamp_line(argv: Sequence[str], cpu: bool) -> str:
    import torch

    device = "CPU" if cpu or not torch.cuda.is_available() else torch.cuda.get_device_name()
    date = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"
    return f"`python -m tools.check_multigpu {shlex.join(argv)}`\n· {device} · torch {torch.__version__} · {date}"


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m tools.check_multigpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the DDP and FSDP runs; 1 runs their "
                   "code path on one GPU (default 2)")
    p.add_argument("--scaling", choices=("off", "on", "only"), default="off",
                   help="part 4, tnl_385m tokens/s per GPU: off (default), on (after parts 1-3), only")
    p.add_argument("--strategies", default="single,ddp,fsdp",
                   help="comma-separated subset of single,ddp,fsdp (default all)")
    p.add_argument("--cpu", action="store_true", help="CPU processes: DDP over gloo through torchrun; no FSDP")
    p.add_argument("--out", type=Path, default=None,
                   help="a new folder for the runs (default outputs/check_multigpu/<UTC time>); refused if it exists")
    p.add_argument("--run-timeout", type=float, default=None,
                   help="seconds each run may take (default 240 for parts 1-3, 420 for the scaling runs)")
    p.add_argument("--scaling-skip", type=int, default=10, help="steps left out of the tokens/s median (default 10)")
    p.add_argument("--scaling-reference", type=Path, default=None,
                   help="the scaling_single folder of an earlier check: its 1-GPU tokens/s, when --strategies leaves "
                   "out single (to split part 4 over two calls)")
    p.add_argument("overrides", nargs="*", help="`tnl train` overrides added to every run (e.g. data.path=...)")
    a = p.parse_args(argv)
    strategies = [s for s in a.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise CheckError(f"--strategies {a.strategies}: choose from {','.join(STRATEGIES)}")
    if a.nproc < 1:
        raise CheckError(f"--nproc {a.nproc}: needs 1 or more processes")
    bad = [o for o in a.overrides if "=" not in o]
    if bad:
        raise CheckError(f"{bad[0]!r} is not a key=value override of `tnl train`")
    out = a.out or ROOT / "outputs" / "check_multigpu" / f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    if out.exists():
        raise CheckError(f"{out} exists; pass a new --out (nothing in an existing folder is replaced)")
    ref = a.scaling_reference
    if ref is not None and not (ref / "metrics.jsonl").is_file():
        raise CheckError(f"--scaling-reference {ref}: no metrics.jsonl there; pass the scaling_single folder of an "
                         "earlier check")
    if a.cpu and "fsdp" in strategies:
        if strategies == ["fsdp"]:
            raise CheckError("--cpu --strategies fsdp: Accelerate runs FSDP on GPUs only; check single,ddp on CPUs")
        print("FSDP skipped: Accelerate runs FSDP on GPUs only (--cpu checks 1 process against DDP over gloo)")
        strategies.remove("fsdp")
    return Options(a.nproc, a.cpu, strategies, a.scaling, out.resolve(), list(a.overrides), a.run_timeout,
                   a.scaling_skip, ref.resolve() if ref is not None else None)


def check_devices(opt: Options) -> None:
    import torch

    if opt.cpu:
        return
    have = torch.cuda.device_count()
    need = opt.nproc if any(s != "single" for s in opt.strategies) else 1
    if have < need:
        raise CheckError(f"--nproc {opt.nproc} needs {need} CUDA GPU{'s' if need > 1 else ''}, this machine has "
                         f"{have}; pass --nproc 1 for the DDP/FSDP code path on one GPU, or --cpu")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opt = parse(argv)
        check_devices(opt)
    except CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opt.out.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if opt.cpu:
        env.update(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    runner = Runner(opt.out / "logs", env)
    shown = [s for s in STRATEGIES if s in opt.strategies or (s == "single" and opt.scaling_reference is not None)]
    report = Report(column_titles(shown, opt.nproc, opt.cpu))
    began = time.monotonic()
    if opt.scaling != "only":
        check_runs(opt, runner, report)
    if opt.scaling != "off":
        check_scaling(opt, runner, report)
    report.notes.append(f"Runs and logs: {opt.out} ({time.monotonic() - began:.0f} s in all).")
    text = stamp_line(argv, opt.cpu) + "\n\n" + report.markdown()
    (opt.out / "summary.md").write_text(text + "\n")
    print("\n" + text)
    failed = report.failed
    print("\n" + ("FAILED:\n  " + "\n  ".join(failed) if failed else "OK: every check passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
