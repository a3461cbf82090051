"""`python scripts/compare.py` end to end on a tiny protocol (two arms, one seed, a few steps, through the real
`tnl train` / `tnl evaluate`): the report's rows are the runs' own evaluation JSONs, a re-run starts nothing, and the
report can be rebuilt elsewhere from the runs' small files. The learning-rate choice is checked against brute force."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.corpus import write_corpus
from tnl.compare.protocol import load_protocol
from tnl.compare.runs import best_lr, update_record

ROOT = Path(__file__).resolve().parents[2]


def compare(*args: str, cwd: Path, cache: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "TNL_CACHE_DIR": str(cache), **env_extra}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def tiny_protocol(folder: Path, corpus: Path) -> Path:
    data = ["data=text", f"data.path={corpus}", "data.files.train=[train.jsonl]",
            "data.files.validation=[validation.jsonl]", "data.files.test=[test.jsonl]"]
    protocol = {
        "name": "tiny", "output_dir": str(folder / "runs"), "lrs": [0.003], "seeds": [0], "splits": ["test"],
        "baseline": "tnl",
        "train": ["model=tiny", "model.vocab_size=null", *data, "tokenizer.vocab_size=300", "train.seq_len=32",
                  "train.batch_size=4", "train.mixed_precision=no", "train.eval_every=2", "train.eval_batches=2",
                  "train.num_workers=0", "train.progress=false", "train.max_steps=4", "train.save_every=0",
                  "train.attn_backend=torch", "train.final_eval=false", "train.export=false"],
        "evaluate": [*data, "eval.batch_size=4"],
        "arms": {"tnl": {"label": "TNL tiny", "table": "main", "train": [], "stream": True},
                 "softmax": {"label": "softmax tiny", "table": "main", "train": ["model.token_mixer=softmax"]}},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


def table_rows(markdown: str, heading: str) -> dict[str, dict[str, str]]:
    """The markdown table under `heading`: first cell -> {column: cell}."""
    table = []
    for line in markdown.split(f"### {heading}\n", 1)[1].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    head, rows = table[0], table[2:]
    return {row[0]: dict(zip(head, row)) for row in rows}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One full compare.py call on the tiny protocol, its runs two at a time, each finished run's small files
    copied as it finishes."""
    tmp = tmp_path_factory.mktemp("compare")
    corpus = write_corpus(tmp / "corpus", 40, {"train": 30, "validation": 4, "test": 4}, 80)
    protocol = tiny_protocol(tmp, corpus)
    md, img = tmp / "results.md", tmp / "img"
    md.write_text("# Results\n\n<!-- other -->\nkept as it is\n<!-- /other -->\n")
    args = ["--protocol", str(protocol), "--results-md", str(md), "--img-dir", str(img)]
    proc = compare(*args, "--jobs", "2", "--copy-summaries", str(tmp / "live"), cwd=tmp, cache=tmp / "cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, args, proc


def test_report_rows_are_the_runs_own_evaluations(done):
    tmp, _, proc = done
    assert proc.stdout.count("$ python -m tnl train") == 2 and proc.stdout.count("$ python -m tnl evaluate") == 3
    assert proc.stdout.count("$ python -m tnl prepare-data") == 2
    # with --jobs each command's output has its own log, not the terminal
    logs = sorted(p.name for p in (tmp / "runs" / "logs").iterdir())
    assert logs == ["softmax_lr=0.003_seed=0_test_window.log", "softmax_lr=0.003_seed=0_train.log",
                    "softmax_prepare-data.log", "tnl_lr=0.003_seed=0_test_stream.log",
                    "tnl_lr=0.003_seed=0_test_window.log", "tnl_lr=0.003_seed=0_train.log", "tnl_prepare-data.log"]
    log = {name: (tmp / "runs" / "logs" / name).read_text() for name in logs}
    assert "model:" in log["tnl_lr=0.003_seed=0_train.log"]
    # the data was prepared once, before the runs started side by side: no run trained a tokenizer of its own
    prepared = [log[f"{arm}_prepare-data.log"] for arm in ("tnl", "softmax")]
    assert sum("tokenizer: training byte-level BPE" in text for text in prepared) == 1
    for arm in ("tnl", "softmax"):
        assert "tokenizer: cached byte-level BPE" in log[f"{arm}_lr=0.003_seed=0_train.log"]
    assert "model:" not in proc.stdout
    md = (tmp / "results.md").read_text()
    assert "<!-- other -->\nkept as it is\n<!-- /other -->" in md  # other sections stay
    rows = table_rows(md, "TNL vs Transformer")
    for label, arm in (("TNL tiny", "tnl"), ("softmax tiny", "softmax")):
        run = tmp / "runs" / arm / "lr0.003-seed0"
        record = json.loads((run / "compare.json").read_text())
        assert record["status"] == "done" and record["jobs"] == 2
        window = json.loads((run / "eval_test_window.json").read_text())
        assert window["mode"] == "window" and window["max_length"] == 32  # the training length
        assert Path(window["model_path"]) == run
        row = rows[label]
        assert row["test word ppl"] == f"{window['word_perplexity']:.2f}"
        assert row["test bits/byte"] == f"{window['bits_per_byte']:.4f}"
        assert row["test token ppl"] == f"{window['token_perplexity']:.2f}"
        assert row["lr"] == "0.003" and row["seeds"] == "1"
        if arm == "tnl":
            stream = json.loads((run / "eval_test_stream.json").read_text())
            assert stream["mode"] == "stream" and row["test word ppl, stream"] == f"{stream['word_perplexity']:.2f}"
        else:
            assert not (run / "eval_test_stream.json").exists() and row["test word ppl, stream"] == "n/a"
    assert "up to 2 runs side by side on one device (`--jobs 2`)" in md
    for png in ("compare_tiny_curves.png", "compare_tiny_arms.png"):
        assert 0 < (tmp / "img" / png).stat().st_size < 100_000


def test_a_rerun_skips_finished_work_and_a_copy_rebuilds_the_report(done):
    tmp, args, _ = done
    evals = sorted((tmp / "runs").rglob("eval_*.json"))
    before = {p: p.stat().st_mtime_ns for p in evals}
    md_before = (tmp / "results.md").read_text()
    live = {p.relative_to(tmp / "live"): p.read_bytes() for p in (tmp / "live").rglob("*") if p.is_file()}
    again = compare(*args, "--copy-summaries", str(tmp / "copy"), cwd=tmp, cache=tmp / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ python -m tnl" not in again.stdout  # nothing started
    assert again.stdout.count("[skip]") == 5
    assert {p: p.stat().st_mtime_ns for p in evals} == before
    assert not list((tmp / "copy").rglob("*.safetensors"))  # small files only
    # the copies made as each run finished are those of the finished runs
    assert live == {p.relative_to(tmp / "copy"): p.read_bytes() for p in (tmp / "copy").rglob("*") if p.is_file()}

    # the same report from the copied files alone, elsewhere
    other = tmp / "other.md"
    rebuilt = compare("--protocol", args[1], "--report", "--output-dir", str(tmp / "copy"), "--results-md",
                      str(other), "--img-dir", str(tmp / "img2"), cwd=tmp, cache=tmp / "cache")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    for heading in ("TNL vs Transformer", "Learning-rate sweep"):
        assert table_rows(other.read_text(), heading) == table_rows(md_before, heading)


def test_bad_arguments_are_one_line(tmp_path):
    proto = tmp_path / "p.yaml"
    proto.write_text(yaml.safe_dump({"name": "p", "lrs": [1e-3], "seeds": [1], "arms": {"a": {"train": []}}}))
    proc = compare("--protocol", str(proto), "--only", "b", "--dry-run", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no arm 'b' in {proto}; the arms are a"
    proto.write_text(yaml.safe_dump({"name": "p", "lrs": [], "seeds": [1], "arms": {"a": {}}}))
    proc = compare("--protocol", str(proto), "--dry-run", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2 and proc.stderr.strip().startswith(f"error: {proto}: lrs must be a non-empty list")
    proto.write_text(yaml.safe_dump({"name": "p", "lrs": [1e-3], "seeds": [1], "arms": {"a": {"train": []}}}))
    proc = compare("--protocol", str(proto), "--stall-timeout", "-5", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --stall-timeout -5: give 0 (never) or more seconds"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "c").exists()


def test_the_chosen_learning_rate_has_the_lowest_validation_loss(tmp_path):
    """Random validation curves for five rates (one beyond the protocol's, found on disk; one diverged, one
    unfinished): the choice is the finished, non-diverged rate with the lowest loss anywhere on its curve."""
    rng = random.Random(0)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "output_dir": str(tmp_path / "runs"), "lrs": [1e-4, 3e-4, 1e-3, 3e-3],
                                    "seeds": [7, 8], "arms": {"a": {"train": []}}}))
    protocol = load_protocol(path)
    arm = protocol.arm("a")
    lowest = {}
    for lr, status in ((1e-4, "done"), (3e-4, "done"), (1e-3, "diverged"), (3e-3, None), (5e-3, "done")):
        folder = protocol.run_dir(arm, lr, 7)
        folder.mkdir(parents=True)
        rows = [{"step": s, "split": "validation", "loss": rng.uniform(2, 4)} for s in range(10, 60, 10)]
        rows.insert(2, {"step": 25, "loss": 0.5, "lr": lr})  # a training row: never a validation loss
        if lr == 1e-3:
            rows.append({"step": 60, "split": "validation", "loss": 0.1})  # diverged: never chosen
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if status:
            update_record(folder, status=status)
        if status == "done":
            lowest[lr] = min(r["loss"] for r in rows if r.get("split") == "validation")
    other_seed = protocol.run_dir(arm, 2e-3, 8)  # another seed is not part of the sweep
    other_seed.mkdir(parents=True)
    (other_seed / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "validation", "loss": 0.0}) + "\n")
    update_record(other_seed, status="done")
    lr, loss = best_lr(protocol, arm)
    assert (lr, loss) == min(((v, k) for k, v in lowest.items()))[::-1]


def test_check_composes_every_arm_without_running(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 20, {"train": 4, "validation": 2, "test": 2}, 20)
    path = tiny_protocol(tmp_path, corpus)
    protocol = yaml.safe_load(path.read_text())
    protocol["arms"]["softmax"]["train"].append("model.decay_schedule=sometimes")
    path.write_text(yaml.safe_dump(protocol))
    proc = compare("--protocol", str(path), "--check", cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "ok     tnl" in lines and "ok     evaluate" in lines
    assert any(ln.startswith("error  softmax: model: decay_schedule must be one of") for ln in lines), lines
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_copied_summaries_are_finished_runs_small_files_only(tmp_path):
    from tnl.compare.cli import copy_summaries

    runs = tmp_path / "runs"
    for name, status in (("done", "done"), ("diverged", "diverged"), ("started", "started")):
        folder = runs / "arm" / f"lr0.001-seed{len(name)}"
        (folder / "checkpoints" / "best").mkdir(parents=True)
        (folder / "checkpoints" / "best" / "model.safetensors").write_bytes(b"weights")
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "validation", "loss": 1.0}) + "\n")
        (folder / "eval_test_window.json").write_text("{}")
        update_record(folder, status=status)
    assert copy_summaries(runs, tmp_path / "copy") == 2
    copied = sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == [f"arm/lr0.001-seed{n}/{f}" for n in (4, 8) for f in
                      ("compare.json", "eval_test_window.json", "metrics.jsonl")]


def test_a_command_that_ignores_the_stop_signal_is_killed_after_the_grace_period(tmp_path):
    """A stuck child must not hold a time-limited call: SIGTERM first, SIGKILL once the grace period has passed."""
    import signal
    import time

    from tnl.compare.runner import Deadline, Runner

    stubborn = tmp_path / "python"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\nsleep 60 & wait\nsleep 60\n")
    stubborn.chmod(0o755)
    lines: list[str] = []
    runner = Runner(None, deadline=Deadline(0), python=str(stubborn), log=lines.append)
    runner.stop_grace = 1.0
    start = time.monotonic()
    status = runner.tnl(["train"]).returncode
    assert status == -signal.SIGKILL and time.monotonic() - start < 30
    assert any("time limit" in ln for ln in lines) and any("killing it" in ln for ln in lines)
    for sig in (signal.SIGTERM, signal.SIGINT):  # Deadline took these over for the test process
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)


def test_a_stuck_training_run_prints_its_stacks_is_stopped_and_is_started_once_more(tmp_path, capsys,
                                                                                   monkeypatch):
    """A training command whose metrics.jsonl stops changing is stuck (a run once hung before its first step, deaf
    to SIGTERM): it is asked for its stacks (SIGUSR1, into its log), stopped, and started once more, which here
    finishes. Stuck twice, the run is reported as such, not as done."""
    import signal
    import time

    from tnl.compare.protocol import load_protocol
    from tnl.compare.runner import Deadline, Runner
    from tnl.compare.runs import find_run

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "output_dir": str(tmp_path / "runs"), "lrs": [1e-3], "seeds": [1],
                                    "arms": {"a": {"train": []}}}))
    protocol = load_protocol(path)
    # a fake `python -m tnl train ... output_dir=D`: writes D/metrics.jsonl, then hangs deaf to SIGTERM on the first
    # STUCK starts (answering SIGUSR1 like faulthandler), and ends cleanly on the others
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    "for a; do case $a in output_dir=*) out=${a#output_dir=};; esac; done\n"
                    "mkdir -p $out; echo '{\"step\": 0}' >> $out/metrics.jsonl\n"
                    "n=$(cat $out/starts 2>/dev/null || echo 0); n=$((n + 1)); echo $n > $out/starts\n"
                    "if [ $n -le $STUCK ]; then trap '' TERM; trap 'echo Stack of thread: waiting >&2' USR1\n"
                    "  while :; do sleep 0.2; done; fi\n"
                    "echo '{\"step\": 1}' >> $out/metrics.jsonl\n")
    fake.chmod(0o755)
    for stuck, status in ((1, "done"), (2, "started")):
        monkeypatch.setenv("STUCK", str(stuck))  # the fake command reads it
        lines: list[str] = []
        runner = Runner(protocol, deadline=Deadline(None), python=str(fake), log=lines.append)
        runner.stall_seconds, runner.stop_grace, runner.poll_seconds = 1.0, 1.0, 0.2
        runner._env = {}  # the fake is no python to ask for versions
        run = find_run(protocol, protocol.arm("a"), 1e-3, stuck)
        assert runner.train(run) == status, lines
        assert (run.folder / "starts").read_text().strip() == "2"
        assert sum("no progress for 1 s" in ln for ln in lines) == stuck
        assert sum("killing it" in ln for ln in lines) == stuck  # deaf to SIGTERM: killed after the grace period
        assert any("stuck, started once more" in ln for ln in lines)
        assert capsys.readouterr().err.count("Stack of thread") == stuck  # the command's stderr, after it ended
        assert runner.outcome.failed == (stuck == 2)
        if stuck == 2:
            assert runner.outcome.lines == ["a lr=0.001 seed=2: stuck twice (no progress for 1 s; its stacks are in "
                                            "its log)"]
    # a resumed run's metrics.jsonl is older than its command: the stall clock starts with the command
    run = find_run(protocol, protocol.arm("a"), 1e-3, 3)
    run.folder.mkdir(parents=True)
    (run.folder / "metrics.jsonl").write_text('{"step": 0}\n')
    os.utime(run.folder / "metrics.jsonl", (time.time() - 3600, time.time() - 3600))
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nsleep 2\n")
    slow.chmod(0o755)
    lines = []
    runner = Runner(protocol, deadline=Deadline(None), python=str(slow), log=lines.append)
    runner.stall_seconds, runner.poll_seconds, runner._env = 5.0, 0.2, {}
    assert runner.train(run) == "done" and not any("no progress" in ln for ln in lines), lines
    for sig in (signal.SIGTERM, signal.SIGHUP):  # Deadline took these over for the test process
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_sigusr1_prints_every_thread_stack_of_a_tnl_command(tmp_path):
    """`kill -USR1` on a running `tnl` command prints where each thread is (faulthandler), and the command goes on."""
    import signal
    import time

    (tmp_path / "sleeper.py").write_text("import sys, time\n\ndef main():\n    print('ready', flush=True)\n"
                                         "    time.sleep(3)\n    print('still running', flush=True)\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tnl.cli as c; c.COMMANDS['nap'] = ('sleeper', '');"
            " c.main(['nap'])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "still running", err
    assert "sleeper.py" in err and "line 5 in main" in err, err


def test_a_closed_terminal_stops_the_work_like_sigterm():
    """SIGHUP stops the runs like SIGTERM and SIGINT: the commands, in their own sessions, do not hear it."""
    import signal
    import time

    from tnl.compare.runner import Deadline

    later = Deadline(3600)
    assert not later.passed()
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.1)
    assert later.passed()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # Deadline took these over for the test process
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize("name", ["small", "recipe"])
def test_the_shipped_offline_protocols_pass_their_own_check(name, data_dir, tmp_path):
    """Every arm of the protocols that run offline composes and passes `tnl train`'s start checks on the real
    WikiText files; nothing is trained or cached."""
    env_cache = tmp_path / "cache"
    proc = compare("--protocol", str(ROOT / "configs" / "compare" / f"{name}.yaml"), "--check", cwd=tmp_path,
                   cache=env_cache, TNL_DATA_DIR=str(data_dir))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    arms = yaml.safe_load((ROOT / "configs" / "compare" / f"{name}.yaml").read_text())["arms"]
    assert proc.stdout.splitlines() == [f"ok     {arm}" for arm in arms] + ["ok     evaluate"]
    assert not env_cache.exists()


def test_whole_runs_starts_no_run_that_the_time_left_cannot_finish(tmp_path):
    """`--whole-runs`: with less time left than the longest finished run took (training plus evaluations), a run
    is not started at all (its folder stays absent, the call counts as stopped at the time limit); with enough time,
    or with no finished run to judge by, or without the flag, it starts."""
    import signal

    from tnl.compare.runner import Deadline, Runner
    from tnl.compare.runs import find_run

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "output_dir": str(tmp_path / "runs"), "lrs": [1e-3], "seeds": [1],
                                    "arms": {"a": {"train": []}}}))
    protocol = load_protocol(path)
    fake = tmp_path / "python"  # a `python -m tnl train ... output_dir=D` that finishes at once
    fake.write_text("#!/bin/sh\nfor a; do case $a in output_dir=*) out=${a#output_dir=};; esac; done\n"
                    "mkdir -p $out; echo '{\"step\": 1}' >> $out/metrics.jsonl\n")
    fake.chmod(0o755)
    arm = protocol.arm("a")

    def attempt(seed: int, seconds: float, whole_runs: bool = True) -> tuple[Runner, bool]:
        lines: list[str] = []
        runner = Runner(protocol, deadline=Deadline(seconds), python=str(fake), log=lines.append,
                        whole_runs=whole_runs)
        runner._env = {}  # the fake is no python to ask for versions
        run = find_run(protocol, arm, 1e-3, seed)
        runner.train(run)
        return runner, run.folder.is_dir()

    _, started = attempt(1, 30)
    assert started  # nothing finished yet: nothing to judge by
    first = find_run(protocol, arm, 1e-3, 1)
    assert first.status == "done"
    took = random.uniform(200, 400)
    update_record(first.folder, train_seconds=took - 50, eval_seconds={"test_window": 30.0, "test_stream": 20.0})
    runner, started = attempt(2, took - 20)
    assert not started and runner.outcome.interrupted
    _, started = attempt(3, took + 20)
    assert started
    _, started = attempt(4, took - 20, whole_runs=False)
    assert started
    for sig in (signal.SIGTERM, signal.SIGHUP):  # Deadline took these over for the test process
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_side_by_side_the_seeds_of_a_swept_arm_start_before_the_other_arms_sweeps(tmp_path):
    """With `jobs` > 1 the queue is: the other seeds of arms whose sweep has finished (at their best rate), then the
    sweeps of the others, then their other seeds at the rate those sweeps chose, each run evaluated once trained."""
    import signal

    from tnl.compare.runner import Deadline, Runner
    from tnl.compare.runs import find_run

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "output_dir": str(tmp_path / "runs"), "lrs": [1e-3, 2e-3],
                                    "seeds": [1, 2, 3], "splits": ["test"],
                                    "arms": {"a": {"train": ["+x=a"], "table": "main"},
                                             "b": {"train": ["+x=b"], "table": "main"}}}))
    protocol = load_protocol(path)
    rng = random.Random(3)
    loss = {lr: rng.uniform(2, 4) for lr in (1e-3, 2e-3)}
    for lr in loss:  # arm a's sweep finished in an earlier call
        run = find_run(protocol, protocol.arm("a"), lr, 1)
        (run.folder / "checkpoints").mkdir(parents=True)
        (run.folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "validation", "loss": loss[lr]}))
        update_record(run.folder, status="done")
    a_lr = min(loss, key=loss.get)
    # a fake `python -m tnl CMD ...`: notes each command, trains a run with a random validation loss (checkpoints
    # and all), writes an evaluation's JSON
    order = tmp_path / "order.log"
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\ncmd=$4; out=; res=\n"
                    "for a; do case $a in output_dir=*) out=${a#output_dir=};; eval.output=*) res=${a#eval.output=};;"
                    " esac; done\n"
                    f"echo \"$cmd $out $res\" >> {order}\n"
                    "if [ -n \"$out\" ]; then mkdir -p $out/checkpoints; sleep 0.3\n"
                    "  echo \"{\\\"step\\\": 1, \\\"split\\\": \\\"validation\\\", \\\"loss\\\": $(shuf -i 2-9 -n 1)}\""
                    " > $out/metrics.jsonl; fi\n"
                    "if [ -n \"$res\" ]; then echo '{\"word_perplexity\": 1.0}' > $res; fi\n")
    fake.chmod(0o755)
    runner = Runner(protocol, deadline=Deadline(None), python=str(fake), log=lambda _: None, jobs=2)
    runner._env = {}  # the fake is no python to ask for versions
    runner.poll_seconds = 0.1
    runner.run()
    commands = [line.split() for line in order.read_text().splitlines()]
    assert [c[0] for c in commands[:2]] == ["prepare-data", "prepare-data"]
    trains = [Path(c[1]).relative_to(tmp_path / "runs").as_posix() for c in commands if c[0] == "train"]
    assert sorted(trains[:2]) == [f"a/lr{a_lr:g}-seed{s}" for s in (2, 3)]
    assert sorted(trains[2:4]) == ["b/lr0.001-seed1", "b/lr0.002-seed1"]
    b_lr, _ = best_lr(protocol, protocol.arm("b"))
    assert sorted(trains[4:]) == [f"b/lr{b_lr:g}-seed{s}" for s in (2, 3)]
    for arm, lr in (("a", a_lr), ("b", b_lr)):
        for seed in (1, 2, 3):
            assert (protocol.run_dir(protocol.arm(arm), lr, seed) / "eval_test_window.json").is_file()
            if seed != 1:
                assert find_run(protocol, protocol.arm(arm), lr, seed).status == "done"
    assert not runner.outcome.failed and not runner.outcome.interrupted
    # a rate beyond the finished sweep (`--lrs`) trains: the arm is not ready until it has
    order.write_text("")
    runner = Runner(protocol, deadline=Deadline(None), python=str(fake), log=lambda _: None, jobs=2)
    runner._env, runner.poll_seconds = {}, 0.1
    runner.run(only=["a"], lrs=[4e-3])
    trains = [Path(line.split()[1]).relative_to(tmp_path / "runs").as_posix()
              for line in order.read_text().splitlines() if line.startswith("train")]
    assert trains[0] == "a/lr0.004-seed1" and find_run(protocol, protocol.arm("a"), 4e-3, 1).status == "done"
    for sig in (signal.SIGTERM, signal.SIGHUP):  # Deadline took these over for the test process
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_the_reports_versions_name_each_library_set_once_with_all_its_commits(tmp_path):
    from tnl.compare.report import ArmResult, _environment
    from tnl.compare.runs import Run

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "lrs": [1e-3], "seeds": [1], "arms": {"a": {"train": []}}}))
    arm = load_protocol(path).arm("a")
    libs = {"torch": "2.11", "triton": "3.6", "python": "3.12.3", "device": "H100"}
    envs = [{**libs, "commit": "aaa"}, {**libs, "commit": "bbb"}, {**libs, "commit": "aaa"},
            {**libs, "torch": "2.13", "commit": "ccc"}, {**libs, "torch": "2.13"}]
    runs = [Run(arm, 1e-3, seed, tmp_path, {"environment": env}) for seed, env in enumerate(envs)]
    device, versions = _environment([ArmResult(arm, runs=runs[:2], sweep=runs[2:])])
    assert device == "H100"
    assert versions == ("torch 2.11, triton 3.6, python 3.12.3, tnl aaa and bbb; "
                        "torch 2.13, triton 3.6, python 3.12.3, tnl ccc")


def test_an_arm_chosen_from_an_incomplete_sweep_says_so(tmp_path):
    """Two of three rates finished: the tables give the rate as the best of those two, and the sweep table lists the
    third as not run; with all three finished, the rate stands alone."""
    from tnl.compare.report import collect, sweep_table

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "output_dir": str(tmp_path / "runs"), "lrs": [1e-3, 2e-3, 4e-3],
                                    "seeds": [1], "arms": {"a": {"train": [], "table": "ablation"}}}))
    protocol = load_protocol(path)
    arm = protocol.arm("a")
    losses = dict(zip((1e-3, 2e-3, 4e-3), random.Random(5).sample(range(20, 60), 3)))
    for lr in (1e-3, 4e-3):
        folder = protocol.run_dir(arm, lr, 1)
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 5, "split": "validation", "loss": losses[lr] / 10}))
        update_record(folder, status="done")
    res, = collect(protocol)
    best = min((1e-3, 4e-3), key=losses.get)
    assert res.lr_cell() == f"{best:g} (best of 2 of 3 rates)"
    assert "| a | 0.002 | not run |" in sweep_table([res])
    folder = protocol.run_dir(arm, 2e-3, 1)
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 5, "split": "validation", "loss": losses[2e-3] / 10}))
    update_record(folder, status="done")
    res, = collect(protocol)
    assert res.lr_cell() == f"{min(losses, key=losses.get):g}" and "not run" not in sweep_table([res])
