"""A signal to the whole process group (what SLURM, Kubernetes, `timeout` and Ctrl-C send) saves a checkpoint:
the DataLoader workers ignore it, the main process finishes its step, saves and exits 128 + the signal."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.corpus import write_corpus
from tests.train.test_train import _args
from tnl.checkpoint import list_checkpoints, verify


def _start_group(args: list[str]) -> subprocess.Popen:
    """`args` in its own process group, as a scheduler's job has, output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_steps(proc: subprocess.Popen, out: Path, steps: int) -> float:
    """Wait until the run has logged `steps` rows; returns the deadline (two minutes from now) for what follows."""
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= steps) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        time.sleep(0.05)
    return deadline


def _assert_one_checkpoint_from_step(out: Path, first: int) -> None:
    """The run holds exactly one checkpoint, it verifies, and it was saved at step `first` or later."""
    (step, folder), = list_checkpoints(out / "checkpoints")
    assert verify(folder) is None
    assert json.loads((folder / "trainer_state.json").read_text())["step"] == step >= first


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_process_group_saves_a_checkpoint_with_workers_running(tmp_path, sig):
    corpus = write_corpus(tmp_path / "corpus", 60, {"train": 60, "validation": 8}, 120)
    out = tmp_path / "run"
    args = _args(corpus, out, "train.max_steps=100000", "train.save_every=0", "train.num_workers=2")
    proc = _start_group(args)
    try:
        _wait_for_steps(proc, out, 3)
        os.killpg(proc.pid, sig)  # the main process and its DataLoader workers
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, output[-2000:]
    assert f"checkpoint (signal {sig.name}) saved" in output and "DataLoader worker" not in output
    _assert_one_checkpoint_from_step(out, 3)


def test_repeated_signals_during_the_save_neither_break_it_nor_print_a_traceback(tmp_path):
    """A scheduler may repeat its signal and a user may press Ctrl-C twice: the first signal's checkpoint is saved
    and its exit status stands; later ones (SIGTERM and SIGINT, sent without pause until the process is gone, so
    some land during the save) only print a note."""
    corpus = write_corpus(tmp_path / "corpus", 60, {"train": 60, "validation": 8}, 120)
    out = tmp_path / "run"
    args = _args(corpus, out, "train.max_steps=100000", "train.save_every=0", "train.num_workers=1")
    proc = _start_group(args)
    try:
        deadline = _wait_for_steps(proc, out, 3)
        os.killpg(proc.pid, signal.SIGINT)  # first (Python runs pending handlers lowest signal number first)
        repeats = 0
        while proc.poll() is None and time.time() < deadline:
            try:
                os.killpg(proc.pid, (signal.SIGTERM, signal.SIGINT)[repeats % 2])
            except ProcessLookupError:
                break
            repeats += 1
            time.sleep(0.005)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert repeats > 0 and proc.returncode == 128 + signal.SIGINT, output[-2000:]
    assert "Traceback" not in output and "checkpoint (signal SIGINT) saved" in output
    assert output.count("already stopping") == 1
    _assert_one_checkpoint_from_step(out, 3)


def test_a_signal_during_the_final_evaluation_stops_it_at_once(tmp_path):
    """After the last checkpoint the final evaluation and export may take long; a scheduler's SIGTERM then ends the
    process at once (exit 143) with the checkpoint intact and no half-written eval JSON or export."""
    corpus = write_corpus(tmp_path / "corpus", 60, {"train": 30, "validation": 600}, 400)
    out = tmp_path / "run"
    args = _args(corpus, out, "train.max_steps=3", "train.final_eval=true", "train.export=true")
    proc = _start_group(args)
    lines = []
    try:
        for line in proc.stdout:  # wait until the evaluation has started
            lines.append(line)
            if "evaluating perplexity" in line:
                break
        assert proc.poll() is None, "".join(lines)[-2000:]
        os.killpg(proc.pid, signal.SIGTERM)
        started = time.time()
        output, _ = proc.communicate(timeout=60)
        took = time.time() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(lines) + output
    assert proc.returncode == 128 + signal.SIGTERM and took < 30, output[-2000:]
    assert "Traceback" not in output
    assert not (out / "eval_validation.json").exists() and not (out / "export").exists()
    (step, folder), = list_checkpoints(out / "checkpoints")
    assert step == 3 and verify(folder) is None


def test_a_finished_run_with_workers_exits_even_with_the_garbage_collector_off(tmp_path):
    """The workers ignore SIGTERM, which is what Python's exit sends leftover child processes before joining them: a
    run whose DataLoader iterator outlived training (in a reference cycle; here the collector never runs) once
    finished its work and then waited at exit forever. The run must end its workers itself."""
    corpus = write_corpus(tmp_path / "corpus", 60, {"train": 60, "validation": 8}, 120)
    out = tmp_path / "run"
    wrapper = tmp_path / "gc_off.py"
    wrapper.write_text("import gc, os, runpy, sys\ngc.disable()\nsys.argv = sys.argv[1:]\n"
                       "sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python train.py` would\n"
                       "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    args = _args(corpus, out, "train.max_steps=3", "train.num_workers=2")
    proc = _start_group([args[0], str(wrapper), *args[1:]])
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the finished run did not exit: it waits for its DataLoader workers")
    assert proc.returncode == 0, output[-2000:]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
