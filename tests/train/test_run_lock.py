"""One training run per run folder: a second run is refused with the holder's pid; a killed holder frees it."""

import os
import signal
import subprocess
import time

from tests.helpers.corpus import write_corpus
from tests.train.test_train import _args, _losses, _run


def test_second_run_on_the_same_folder_is_refused_and_a_killed_holder_frees_it(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 60, {"train": 60, "validation": 8}, 120)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    holder = subprocess.Popen(_args(corpus, out, "train.max_steps=100000", "train.save_every=0"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            assert holder.poll() is None
            time.sleep(0.05)
        second = _run(_args(corpus, out, "train.max_steps=2", "train.seed=7"))
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip().splitlines() == [
            f"error: {out} is in use by another training run (pid {holder.pid}); wait for it to end or stop it, "
            "or train into another output_dir"]
        assert "seed: 7" not in (out / "config.yaml").read_text()
        assert holder.poll() is None  # the first run goes on
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # no chance to unlock: the OS releases the lock
        holder.wait()
    third = _run(_args(corpus, out, "train.max_steps=2", "resume=none"))
    assert third.returncode == 0, third.stderr[-2000:]
    assert sorted(_losses(out)) == [1, 2]
    assert (out / ".lock").read_text() == ""  # the pid is there only while a run holds the folder
