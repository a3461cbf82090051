"""The best checkpoint by validation loss, early stopping, the overfitting warning, and exact resume with a best
checkpoint present, all with the default loader (one worker), bf16 autocast and periodic evaluation on.

The corpus makes validation loss fall, then rise: training text uses 20 words, validation text 60, so the model
first learns what both share, then how rare the validation-only words are in training."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.corpus import write_corpus
from tests.train.test_train import _args, _run
from tnl.checkpoint import list_checkpoints, load_pretrained, verify
from tnl.train.metrics import read_metrics

PATIENCE = 3
# bf16 autocast where the CPU has it; float32 elsewhere
PRECISION = "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "no"


def _cli(corpus: Path, out: Path, *extra: str) -> list[str]:
    """The shared test arguments with the defaults this file pins (later keys replace earlier ones)."""
    settings = {
        "train.num_workers": "1", "train.mixed_precision": PRECISION, "train.eval_every": "1",
        "train.eval_batches": "2", "train.save_every": "2", "train.keep_last": "1", "scheduler": "constant",
        "scheduler.warmup_steps": "0", "optim.lr": "1e-2", "train.max_steps": "40",
        "train.early_stop_patience": str(PATIENCE), "train.final_eval": "true", "train.export": "true",
    }
    settings.update(x.split("=", 1) for x in extra)
    args = [a for a in _args(corpus, out) if a.split("=", 1)[0] not in settings]
    return args + [f"{k}={v}" for k, v in settings.items()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("best")
    folder = write_corpus(base / "corpus", 20, {"train": 40}, 100, seed=0)
    other = write_corpus(base / "other", 60, {"validation": 8}, 100, seed=1)
    (folder / "validation.jsonl").write_text((other / "validation.jsonl").read_text())
    return folder


@pytest.fixture(scope="module")
def unbroken(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken") / "run"
    res = _run(_cli(corpus, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout + res.stderr


def _rows(run: Path, kind: str) -> list[dict]:
    rows = read_metrics(run / "metrics.jsonl")
    if kind == "train":
        return [r for r in rows if "split" not in r]
    if kind == "eval":
        return [r for r in rows if r.get("split") == "validation" and "val_loss" in r]
    return [r for r in rows if r.get("split") == kind]


def _expected(evals: list[dict]) -> tuple[list[tuple[int, float]], int | None, int]:
    """Brute force over the logged validation losses: the (best step, best loss) after each evaluation, the step
    where early stopping fires, and how many times the loss rose for the second evaluation in a row."""
    best, out, stop, warnings = None, [], None, 0
    losses = [r["val_loss"] for r in evals]
    for i, row in enumerate(evals):
        if best is None or row["val_loss"] < best[1]:
            best = (row["step"], row["val_loss"])
        out.append(best)
        since = i - next(j for j, r in enumerate(evals) if r["step"] == best[0])
        if stop is None and since >= PATIENCE:
            stop = row["step"]
        if i >= 2 and losses[i] > losses[i - 1] > losses[i - 2] and not (i >= 3 and losses[i - 2] > losses[i - 3]):
            warnings += 1
    return out, stop, warnings


def test_keep_best_is_the_argmin_of_the_validation_rows_and_is_never_rotated(unbroken):
    run, output = unbroken
    evals = _rows(run, "eval")
    running, _, _ = _expected(evals)
    assert [(r["best_step"], r["best_val_loss"]) for r in evals] == running
    best_step, best_loss = min(((r["step"], r["val_loss"]) for r in evals), key=lambda x: x[1])
    last = evals[-1]["step"]
    assert best_step < last - 1  # the data makes validation turn: the best is not the last checkpoint
    folder = run / "checkpoints" / "best"
    assert verify(folder) is None
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == best_step and state["best"]["best_val_loss"] == best_loss
    # keep_last=1 rotated every step_N but the last one away; best stays
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [last]
    (summary,) = _rows(run, "summary")
    assert summary["best_step"] == best_step and summary["evaluated_step"] == best_step
    assert re.search(rf"best: +step {best_step}, validation loss {best_loss:.4f}", output)
    # final evaluation and export used the best weights; a run folder loads as its best checkpoint
    (final,) = [r for r in read_metrics(run / "metrics.jsonl") if "word_perplexity" in r]
    assert final["evaluated_step"] == best_step
    weights = load_file(str(folder / "model.safetensors"))
    exported = load_file(str(run / "export" / "model.safetensors"))
    for name, tensor in weights.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0)
    lines = []
    loaded = load_pretrained(run, log=lines.append)
    assert loaded.path == folder and any(f"best checkpoint, step {best_step}" in ln for ln in lines)


def test_early_stopping_fires_after_patience_evaluations_without_improvement(unbroken):
    run, output = unbroken
    evals = _rows(run, "eval")
    _, stop, warnings = _expected(evals)
    assert stop is not None and stop < 40
    assert evals[-1]["step"] == stop == max(r["step"] for r in _rows(run, "train"))
    assert (run / "checkpoints" / f"step_{stop}").is_dir()
    assert _rows(run, "summary")[0]["early_stopped"] is True
    assert f"early stopping at step {stop}" in output
    assert warnings >= 1 and output.count("validation loss rose for 2 evaluations in a row") == warnings


def test_resume_with_a_best_checkpoint_present_matches_the_unbroken_run(unbroken, corpus, tmp_path):
    run, _ = unbroken
    evals = _rows(run, "eval")
    stop = evals[-1]["step"]
    best_step = _rows(run, "summary")[0]["best_step"]
    cut = stop - 1  # past the best, with evaluations since it and the rising count to carry over
    assert cut > best_step
    part = tmp_path / "run"
    first = _run(_cli(corpus, part, f"train.max_steps={cut}", "train.final_eval=false", "train.export=false"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((part / "checkpoints" / "best" / "trainer_state.json").read_text())["step"] == best_step
    again = _run(_cli(corpus, part))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {part / 'checkpoints' / f'step_{cut}'}" in again.stdout + again.stderr

    def same(rows):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu", "seconds", "tokens_per_second")}
                for r in rows]

    full, resumed = read_metrics(run / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert same(resumed) == same(full)  # every loss, grad norm, validation loss, best step and the final eval
    a = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
