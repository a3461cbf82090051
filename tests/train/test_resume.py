"""Resuming a run: a changed model or tokenizer is refused with the run folder untouched, training-only changes are
logged, a run folder names its newest valid checkpoint, unreadable RNG states are reported."""

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.helpers.corpus import write_corpus
from tests.train.test_train import _args, _losses, _run
from tnl.checkpoint import write_checksums


def folder_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, run folder) of a finished 4-step run with checkpoints at steps 2 and 4."""
    base = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(base / "corpus", 60, {"train": 60, "validation": 8}, 120)
    run = base / "run"
    res = _run(_args(corpus, run, "train.max_steps=4", "train.save_every=2"))
    assert res.returncode == 0, res.stderr[-2000:]
    return corpus, run


@pytest.fixture
def run_copy(finished, tmp_path) -> tuple[Path, Path]:
    corpus, run = finished
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return corpus, tmp_path / "run"


@pytest.mark.parametrize("override, key", [
    ("model.decoder_layers=3", "model.decoder_layers: 2 -> 3"),
    ("++model.decay_schedule=paper", "model.decay_schedule: tnl -> paper"),
    ("tokenizer.vocab_size=400", "tokenizer.vocab_size: 300 -> 400"),
    ("data.files.train=[validation.jsonl]", "tokenizer/: another vocabulary"),  # the BPE is trained on other data
])
def test_resume_with_another_model_or_tokenizer_is_refused_and_changes_nothing(run_copy, override, key):
    corpus, run = run_copy
    before = folder_hash(run)
    res = _run(_args(corpus, run, "train.max_steps=6", override))
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot resume {run} with another model or tokenizer") and key in last
    assert "new output_dir" in last and "Traceback" not in res.stderr
    assert folder_hash(run) == before


def test_resume_with_more_steps_continues_and_logs_the_change(run_copy):
    corpus, run = run_copy
    res = _run(_args(corpus, run, "train.max_steps=6", "train.save_every=3"))
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout + res.stderr
    assert "resumed from" in text and "step_4" in text
    assert "config changed since the checkpoint: train.max_steps: 4 -> 6" in text
    assert sorted(_losses(run)) == list(range(1, 7))
    assert "max_steps: 6" in (run / "config.yaml").read_text()
    assert "max_steps=6" in (run / ".hydra" / "overrides.yaml").read_text()


def test_resume_from_a_run_folder_takes_its_newest_valid_checkpoint(run_copy, tmp_path):
    corpus, run = run_copy
    (run / "checkpoints" / "step_4" / "model.safetensors").write_bytes(b"truncated")
    res = _run(_args(corpus, tmp_path / "continued", "train.max_steps=3", f"resume={run}"))
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout + res.stderr
    assert "step_4 is unusable" in text and f"resumed from {run / 'checkpoints' / 'step_2'} at step 2" in text
    assert sorted(_losses(tmp_path / "continued")) == [3]


def test_resume_from_a_run_folder_without_valid_checkpoints_is_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 60, {"train": 60, "validation": 8}, 120)
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    res = _run(_args(corpus, tmp_path / "new", "train.max_steps=3", f"resume={empty}"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: resume={empty}: the run has no valid checkpoints")


def test_unreadable_rng_states_are_reported_and_training_goes_on(run_copy):
    corpus, run = run_copy
    step = run / "checkpoints" / "step_4"
    (step / "random_states_0.pkl").write_bytes(b"not a pickle")
    (step / "checksums.json").unlink()
    write_checksums(step)  # the checkpoint verifies: only the RNG file is unreadable
    res = _run(_args(corpus, run, "train.max_steps=5"))
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout + res.stderr
    assert text.count("random number generator states") == 1 and "no longer match an unbroken run" in text
    assert sorted(_losses(run)) == list(range(1, 6))


def _corrupt(path: Path, text: str = "{not: [valid") -> None:
    path.write_text(text)


# (damage done to the run, extra overrides, expected start of the error after "error: ")
DAMAGED = {
    "config.yaml unreadable": (lambda run: _corrupt(run / "config.yaml"), (), "cannot resume: {run}/config.yaml is "
                               "unreadable"),
    "model_config.json unreadable": (lambda run: _corrupt(run / "model_config.json"), (),
                                     "cannot resume: {run}/model_config.json is unreadable"),
    # without model_config.json and with config.yaml edited to match, only the weights tell: they do not fit
    "weights of another shape": (
        lambda run: ((run / "model_config.json").unlink(), (run / "config.yaml").write_text(
            (run / "config.yaml").read_text().replace("decoder_layers: 2", "decoder_layers: 3"))),
        ("model.decoder_layers=3",), "cannot resume from {run}/checkpoints/step_4: Error(s) in loading state_dict"),
    "every checkpoint broken": (
        lambda run: [(s / "model.safetensors").write_bytes(b"x") for s in (run / "checkpoints").iterdir()], (),
        "{run}/checkpoints holds checkpoints but none is valid"),
    "resume names a file": (lambda run: None, ("resume={run}/config.yaml",), "resume={run}/config.yaml: not a folder"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_run_is_refused_in_one_line_and_left_as_it_was(run_copy, case):
    corpus, run = run_copy
    damage, extra, expected = DAMAGED[case]
    damage(run)
    before = folder_hash(run)
    res = _run(_args(corpus, run, "train.max_steps=6", *[x.format(run=run) for x in extra]))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: " + expected.format(run=run))
    assert folder_hash(run) == before


def test_resume_reads_the_runs_own_tokenizer_when_the_text_settings_are_unchanged(run_copy):
    """A newer tnl may train another BPE from the same settings (other document boundaries); resuming must then
    use the tokenizer the run trained with, not refuse the run or replace its tokenizer. Simulated by a run whose
    saved BPE differs from the one its settings build (two merges swapped, same vocabulary size)."""
    import json

    corpus, run = run_copy
    path = run / "tokenizer" / "tokenizer.json"
    spec = json.loads(path.read_text())
    merges = spec["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]
    path.write_text(json.dumps(spec))
    before = folder_hash(run / "tokenizer")
    res = _run(_args(corpus, run, "train.max_steps=5"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"tokenizer: the run's own ({run / 'tokenizer'})" in res.stdout + res.stderr
    assert sorted(_losses(run)) == list(range(1, 6))
    assert folder_hash(run / "tokenizer") == before
