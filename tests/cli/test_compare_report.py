"""The comparison report's time figures: runs alone on the device and runs side by side are told apart."""

from __future__ import annotations

import random

import yaml

from tnl.compare.protocol import load_protocol
from tnl.compare.report import ArmResult, _minutes, _total_time, sweep_table
from tnl.compare.runs import Run


def _arms(tmp_path, names):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "lrs": [1e-3], "seeds": [1],
                                    "arms": {n: {"train": []} for n in names}}))
    protocol = load_protocol(path)
    return [protocol.arm(n) for n in names]


def _run(arm, seed, folder, train, evals, jobs):
    record = {"status": "done", "train_seconds": train, "eval_seconds": {"test_window": evals}, "jobs": jobs}
    return Run(arm, 1e-3, seed, folder, record)


def test_runs_alone_and_side_by_side_get_their_own_span_and_alone_runs_are_marked(tmp_path):
    rng = random.Random(11)
    a, b = _arms(tmp_path, ["a", "b"])
    shared = [_run(a, s, tmp_path / f"a{s}", rng.uniform(200, 500), rng.uniform(5, 30), 4) for s in range(3)]
    alone = [_run(b, s, tmp_path / f"b{s}", rng.uniform(60, 150), rng.uniform(5, 30), 1) for s in range(2)]
    results = [ArmResult(a, lr=1e-3, runs=shared[:1], sweep=shared), ArmResult(b, lr=1e-3, runs=alone[:1],
                                                                            sweep=alone)]

    def secs(r):
        return r.record["train_seconds"] + r.record["eval_seconds"]["test_window"]

    def span(runs):
        return f"{min(map(secs, runs)) / 60:.1f}-{max(map(secs, runs)) / 60:.1f} minutes"

    text = _total_time(results)
    assert text == (f"5 runs, {sum(map(secs, shared + alone)) / 60:.0f} minutes in all (training and evaluation); "
                    f"one run alone on the device {span(alone)}; {span(shared)} each with up to 4 runs side by side "
                    "on one device (`--jobs 4`)")
    assert _minutes(alone, True) == f"{sum(map(secs, alone)) / len(alone) / 60:.1f} (alone)"
    assert _minutes(shared, True) == f"{sum(map(secs, shared)) / len(shared) / 60:.1f}"
    sweep = sweep_table(results)
    assert sweep.count("(alone)") == len(alone)
    # every run alone: nothing to tell apart, nothing marked
    only_alone = [ArmResult(b, lr=1e-3, runs=alone[:1], sweep=alone)]
    assert "side by side" not in _total_time(only_alone) and "(alone)" not in sweep_table(only_alone)
    assert _minutes(alone, False) == f"{sum(map(secs, alone)) / len(alone) / 60:.1f}"
