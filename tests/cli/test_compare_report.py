"""The comparison report: time figures (alone vs side by side), the data line, sections that fit the protocol."""

from __future__ import annotations

import datetime as _dt
import random

import yaml

from tnl.compare.protocol import load_protocol
from tnl.compare.report import ArmResult, _device_seconds, _minutes, _total_time, render, sweep_table
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


def _protocol(tmp_path, seeds, tables):
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"name": "q", "lrs": [1e-3], "seeds": seeds, "baseline": "a",
                                    "arms": {n: {"train": [], "label": f"arm {n}", "table": t}
                                             for n, t in tables.items()}}))
    return load_protocol(path)


def _with_config(arm, folder, vocab, files):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"files": {"train": files}},
                                                        "tokenizer": {"kind": "bpe", "vocab_size": vocab}}))
    return Run(arm, 1e-3, 1, folder, {"status": "done"})


def test_data_line_names_the_arms_that_change_tokenizer_or_data_and_single_seed_reads_plainly(tmp_path):
    rng = random.Random(5)
    protocol = _protocol(tmp_path, [1], {"a": "ablation", "b": "ablation", "c": "ablation"})
    vocab, other = rng.randrange(1000, 60000), rng.randrange(60001, 90000)
    files = [f"train{rng.randrange(100)}.txt"]
    runs = {"a": (vocab, files), "b": (other, files), "c": (vocab, files + ["more.txt"])}
    results = [ArmResult(protocol.arm(n), lr=1e-3, runs=[r], sweep=[r])
               for n, (v, f) in runs.items() for r in [_with_config(protocol.arm(n), tmp_path / n, v, f)]]
    text = render(protocol, results, "cmd", None, None)
    data = next(line for line in text.splitlines() if line.startswith("- Data:"))
    assert f"with {vocab} entries" in data and data.endswith("own train split: arm b; arm c.")
    assert "The main arms" not in text and "### TNL vs Transformer" not in text  # no main pair, one seed
    assert "per token of each arm's own tokenizer" in render(protocol, results, "cmd", "c.png", None)
    # every arm alike: said plainly, nobody named
    same = [ArmResult(r.arm, lr=1e-3, runs=[r], sweep=[r]) for r in [results[0].runs[0]]]
    assert "the same for every arm." in render(protocol, same, "cmd", None, None)
    assert "own tokenizer" not in render(protocol, same, "cmd", "c.png", None)


def test_main_pair_and_its_seeds_are_reported_when_the_protocol_has_them(tmp_path):
    protocol = _protocol(tmp_path, [1, 2, 3], {"a": "main", "b": "ablation"})
    results = [ArmResult(protocol.arm(n), lr=1e-3, runs=[r], sweep=[r])
               for n in "ab" for r in [_with_config(protocol.arm(n), tmp_path / n, 50265, ["t.txt"])]]
    text = render(protocol, results, "cmd", None, None)
    assert "### TNL vs Transformer" in text and "The main arms then run seeds 1, 2, 3" in text


def test_device_time_is_the_union_of_the_runs_spans(tmp_path):
    rng = random.Random(3)
    (a,) = _arms(tmp_path, ["a"])
    t0 = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc).timestamp()
    runs, busy = [], set()
    for i in range(12):  # whole seconds, so a set of seconds is the brute-force union
        start, train, evals = rng.randrange(0, 3000), rng.randrange(60, 900), rng.randrange(1, 60)
        finished = _dt.datetime.fromtimestamp(t0 + start + train, _dt.timezone.utc).isoformat()
        record = {"status": "done", "train_seconds": train, "eval_seconds": {"test_window": evals}, "jobs": 4,
                  "finished": finished}
        runs.append(Run(a, 1e-3, i, tmp_path / f"r{i}", record))
        busy.update(range(start, start + train + evals))
    assert _device_seconds(runs) == len(busy)
    text = _total_time([ArmResult(a, lr=1e-3, runs=runs[:1], sweep=runs)])
    assert f", {len(busy) / 60:.0f} minutes of device time" in text
    del runs[0].record["finished"]  # a record without the times: no figure rather than a wrong one
    assert _device_seconds(runs) is None and "device time" not in _total_time([ArmResult(a, 1e-3, runs[:1], runs)])
