"""`python scripts/compare.py`: run a protocol (configs/compare/small.yaml by default), then write its report.

    python scripts/compare.py                                   # everything, then docs/results.md
    python scripts/compare.py --only tnl transformer --seeds 1 --lrs 1e-3 --time-limit 520
    python scripts/compare.py --report                          # only the report, from the finished runs
    python scripts/compare.py --dry-run                         # the commands it would run

Re-running skips finished runs and evaluations and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tnl import settings
from tnl.errors import UserError

from .protocol import Protocol, load_protocol
from .report import write_report
from .runner import STALL_SECONDS, Deadline, Runner
from .runs import RECORD, copy_small_files, read_record

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="compare.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default=str(ROOT / "configs" / "compare" / "small.yaml"),
                    help="protocol file (default configs/compare/small.yaml)")
    ap.add_argument("--only", nargs="+", metavar="ARM", help="these arms only")
    ap.add_argument("--seeds", nargs="+", type=int, help="these seeds only")
    ap.add_argument("--lrs", nargs="+", type=float, help="these learning rates of the sweep only")
    ap.add_argument("--steps", type=int, help="train.max_steps for every run (its own output folder: -steps<N>)")
    ap.add_argument("--output-dir", help="where the run folders go (default: the protocol's output_dir)")
    ap.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="start nothing after this; a run still training is stopped with a checkpoint")
    ap.add_argument("--whole-runs", action="store_true",
                    help="with --time-limit: start a training run only when the time left covers the longest run "
                         "finished so far (training and evaluations), for machines whose run folders and "
                         "checkpoints do not outlive the call")
    ap.add_argument("--report", action="store_true", help="only write the report from the finished runs")
    ap.add_argument("--no-report", action="store_true", help="run, but leave the report alone")
    ap.add_argument("--results-md", default=str(ROOT / "docs" / "results.md"), help="the report's file")
    ap.add_argument("--img-dir", default=str(ROOT / "docs" / "img"), help="the report's plots")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--retry-failed", action="store_true", help="train diverged runs again")
    ap.add_argument("--eval-each", action="store_true",
                    help="evaluate every sweep run as soon as it has trained, not only the chosen rate's (for "
                         "machines that do not keep run folders between calls)")
    ap.add_argument("--check", action="store_true",
                    help="compose and check every run's tnl train config and the evaluation config, run nothing")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="train and evaluate up to N runs at once (several small runs share one GPU; each run's "
                         "output goes to OUTPUT_DIR/logs/)")
    ap.add_argument("--stall-timeout", type=float, default=STALL_SECONDS, metavar="SECONDS",
                    help="a training run whose metrics.jsonl has not changed for this long is stuck: its stacks go to "
                         "its log, it is stopped and started once more (0: never; default %(default)g)")
    ap.add_argument("--copy-summaries", metavar="DIR",
                    help="copy each run's small files (records, metrics, evaluations, config; no checkpoints) to DIR, "
                         "the same layout: `--report --output-dir DIR` then works from them elsewhere")
    return ap.parse_args(argv)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces the report's runs."""
    try:
        protocol = Path(args.protocol).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        protocol = args.protocol
    cmd = "python scripts/compare.py"
    if protocol != "configs/compare/small.yaml":
        cmd += f" --protocol {protocol}"
    if args.steps:
        cmd += f" --steps {args.steps}"
    return cmd


def copy_summaries(output_dir: Path, dest: Path) -> int:
    """Copy the small files of the finished run folders to `dest` (same relative paths); how many were copied.
    Unfinished runs are left out: without their checkpoints they could only start again."""
    count = 0
    for record in sorted(output_dir.glob(f"*/*/{RECORD}")):
        if read_record(record.parent).get("status") in ("done", "diverged"):
            copy_small_files(record.parent, output_dir, dest)
            count += 1
    return count


def check(protocol: Protocol, only: list[str] | None) -> int:
    """Compose each arm's `tnl train` config (at the first rate and seed) and the evaluation config, and run the
    value checks `tnl train` runs at start (data files included): one line per arm; 1 if any fails."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tnl.commands import CONFIG_DIR
    from tnl.train.config import check_config, register_schema

    register_schema()
    bad = 0
    arms = [protocol.arm(a) for a in only] if only else list(protocol.arms)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        jobs = [(a.name, "config", protocol.train_overrides(a, protocol.lrs[0], protocol.seeds[0])) for a in arms]
        jobs.append(("evaluate", "evaluate", [*protocol.evaluate, "model_path=x"]))
        for name, config, overrides in jobs:
            try:
                cfg = compose(config, overrides=overrides)
                if config == "config":
                    check_config(cfg)
                print(f"ok     {name}")
            except (HydraException, OmegaConfBaseException, UserError) as err:
                bad = 1
                print(f"error  {name}: {str(err).splitlines()[0]}")
    return bad


def run(args: argparse.Namespace) -> int:
    protocol = load_protocol(args.protocol, args.output_dir, args.steps)
    if args.only:
        for name in args.only:
            protocol.arm(name)  # an unknown arm is one error line before anything runs
    if args.check:
        return check(protocol, args.only)
    status = 0
    if not args.report:
        if args.jobs < 1:
            raise UserError(f"--jobs {args.jobs}: give 1 or more")
        if args.stall_timeout < 0:
            raise UserError(f"--stall-timeout {args.stall_timeout:g}: give 0 (never) or more seconds")
        runner = Runner(protocol, deadline=Deadline(args.time_limit), dry_run=args.dry_run,
                        retry_failed=args.retry_failed, eval_each=args.eval_each, jobs=args.jobs,
                        copy_to=Path(args.copy_summaries) if args.copy_summaries else None,
                        stall_seconds=args.stall_timeout, whole_runs=args.whole_runs)
        outcome = runner.run(args.only, args.seeds, args.lrs)
        print(f"\nruns: {protocol.output_dir}")
        for line in outcome.lines:
            print(f"  {line}")
        if outcome.interrupted:
            print("  stopped at the time limit: re-run the same command to continue")
        status = 1 if outcome.failed else 0
    if args.copy_summaries:
        n = copy_summaries(protocol.output_dir, Path(args.copy_summaries))
        print(f"copied the small files of {n} runs to {args.copy_summaries}")
    if not args.dry_run and not args.no_report:
        path = write_report(protocol, Path(args.results_md), Path(args.img_dir), command_line(args))
        print(f"report: {path}")
    return status


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        status = run(args)
    except UserError as err:
        if settings.debug():
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)
