"""Hostile inputs, one table row each: tnl's command line must refuse with exactly one `error: ...` line on stderr,
exit 2, no traceback, and leave the folder named in the row exactly as it was (hashed before and after).

Each row runs `tnl.cli.main` in its own process, as `python -m tnl ARGS` does, forked from a server process that has
imported tnl once (multiprocessing's forkserver), so a row costs its own work rather than a fresh import of torch;
tests/cli/test_cli.py runs the real `python -m tnl` for the same contract. The rows fail before any tokenizer or
data work, so the processes are cheap; they run a few at a time."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from tests.helpers.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"

# (command and args, start of the error line, folder whose contents must not change). {run}, {corpus}, {cache} and
# {missing} name the folders of the `world` fixture: an existing run, a small corpus, tnl's cache and a missing path.
ROWS = [
    # config values, checked before the run folder is touched
    ("train experiment=quickstrat", "error: unknown experiment 'quickstrat'; known: quickstart,", "run"),
    ("train tokenizer.vocab_size=0", "error: tokenizer.vocab_size=0 is not valid; use an integer >= 257", "run"),
    ("train tokenizer.vocab_size=200", "error: tokenizer.vocab_size=200 is not valid; use an integer >= 257", "cache"),
    ("train tokenizer.name=gpt2", "error: tokenizer.name has no effect with tokenizer=bpe", "run"),
    ("train tokenizer=hf tokenizer.name=gpt2 tokenizer.vocab_size=100",
     "error: tokenizer.vocab_size has no effect with tokenizer=hf", "run"),
    ("train tokenizer=hf", "error: tokenizer=hf needs tokenizer.name=", "run"),
    ("train train.batch_size=0", "error: train.batch_size=0 is not valid; use an integer >= 1", "run"),
    ("train train.batch_size=-4", "error: train.batch_size=-4 is not valid; use an integer >= 1", "run"),
    ("train optim.lr=-1", "error: optim.lr=-1.0 is not valid; use a number >= 0", "run"),
    ("train train.grad_accum=0", "error: train.grad_accum=0 is not valid; use an integer >= 1", "run"),
    ("train train.max_steps=0", "error: train.max_steps=0 is not valid; use an integer >= 1", "run"),
    ("train train.log_every=0", "error: train.log_every=0 is not valid; use an integer >= 1", "run"),
    ("train train.mixed_precision=fp8", "error: train.mixed_precision=fp8 is not valid; use bf16 | fp16 | no", "run"),
    ("train scheduler.name=cosin", "error: scheduler.name=cosin is not valid; use cosine | wsd |", "run"),
    ("train optim.name=sgd", "error: optim.name=sgd is not valid; use adamw", "run"),
    ("train model.decoder_attention_heads=3", "error: model: hidden_dim 64 must be divisible by 3 heads", "run"),
    ("train experiment=quickstart model.linear_use_lrpe_list=[1,0]",
     "error: model: linear_use_lrpe_list has 2 entries for 4 layers", "run"),
    ("train +model.hiden_dim=3", "error: unknown model field(s) ['hiden_dim']", "run"),
    # sweeps: every point is checked before the first job starts (a job that ran would write into the run folder)
    ("train -m train.batch_size=0", "error: train.batch_size=0 is not valid", "run"),
    ("train -m train.batch_size=4,0", "error: train.batch_size=0 is not valid", "run"),
    ("train --multirun optim.lr=1e-3,-1 train.max_steps=1", "error: optim.lr=-1.0 is not valid", "run"),
    ("train -m experiment=quickstart,quickstrat", "error: unknown experiment 'quickstrat'", "run"),
    ("prepare-data -m tokenizer.vocab_size=300,0", "error: tokenizer.vocab_size=0 is not valid", "cache"),
    ("prepare-data tokenizer.vocab_size=0", "error: tokenizer.vocab_size=0 is not valid", "cache"),
    ("prepare-data experiment=quickstrat", "error: unknown experiment 'quickstrat'", "cache"),
    # data, found missing before any data work
    ("train data=text data.path={missing}/corpus.txt", "error: data.path {missing}/corpus.txt not found", "run"),
    ("train data=text data.path={corpus} data.files.train=[nope.jsonl]",
     "error: data file not found: {corpus}/nope.jsonl", "run"),
    ("train data=text data.path={corpus} data.files.train=[empty.txt]", "error: data file is empty:", "corpus"),
    ("train data=text data.path={corpus}/train.jsonl data.validation_fraction=0",
     "error: data.files has no entry for split 'validation'", "corpus"),
    ("train data=text data.path={corpus}/train.jsonl data.validation_fraction=1",
     "error: data.validation_fraction=1.0 is not valid; use [0, 1)", "corpus"),
    ("train data.sample_by=document", "error: data.sample_by=document is not valid; use line for WikiText", "run"),
    ("train data.streaming=true", "error: data.streaming=True is not valid", "run"),
    # the data work's own errors and the other commands
    ("train data=text data.path={corpus} data.files.train=[latin1.txt] data.files.validation=[latin1.txt] "
     "output_dir={missing}/run", "error: a file of split 'train' is not valid UTF-8", "corpus"),
    ("train resume={missing}", "error: resume={missing}", "run"),
    ("train resume={run}/config.yaml", "error: resume={run}/config.yaml: not a folder", "run"),
    # checkpoints and exports
    ("evaluate model_path={run}", "error: run folder {run} has no valid checkpoints/step_N", "run"),
    ("evaluate model_path={run} eval.mode=rolling", "error: eval.mode must be one of window, sliding, stream", "run"),
    ("export checkpoint={run} out_dir={run}", "error: out_dir {run} is the folder being exported", "run"),
    ("export checkpoint={run}/checkpoints/step_2 out_dir={cache}/export",
     "error: {run} has neither model_config.json nor a model: section", "run"),
    ("trian x=1", "error: unknown command 'trian'; choose one of", "run"),
    ("evaluate model_path={missing}", "error: model_path {missing} does not exist", "run"),
    ("evaluate model_path={corpus}", "error: {corpus} is not a model", "corpus"),
    ("export checkpoint={missing} out_dir={cache}/export", "error: checkpoint {missing} does not exist", "cache"),
    ("export checkpoint={run} out_dir={cache}/export format=zip", "error: format must be one of hf, official", "run"),
]
# Hydra composition errors (unknown key, wrong type, unknown group option, bad override syntax): checked by
# tnl.commands.check_overrides before Hydra runs, so they too are one line with exit 2
HYDRA_ROWS = [
    ("train train.bach_size=1", "error: Could not override 'train.bach_size'", "run"),
    ("train train.batch_size=abc", "error: Error merging override train.batch_size=abc", "run"),
    ("train model=tinny", "error: In 'config': Could not find 'model/tinny'", "run"),
    ("evaluate model_path", "error: Error parsing override 'model_path'", "run"),
    ("train -m train.bach_size=1,2", "error: Could not override 'train.bach_size'", "run"),
    ("train -m model=tiny,tinny", "error: In 'config': Could not find 'model/tinny'", "run"),
]


def folder_hash(folder: Path) -> str:
    """Paths and bytes of every file below `folder`, but an empty RUN/.lock: the run folder's advisory lock file,
    which holds nothing and may stay behind once the lock is released."""
    digest = hashlib.sha256()
    lock = folder / ".lock"
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not (p == lock and p.stat().st_size == 0)):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _world(root: Path) -> dict[str, Path]:
    corpus = write_corpus(root / "corpus", 40, {"train": 30, "validation": 4}, 50)
    (corpus / "empty.txt").write_text("")
    (corpus / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 20)
    run = root / "run"  # what a user's run folder holds; a refused command must not touch it
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "checkpoints" / "step_2" / "model.safetensors").write_bytes(os.urandom(4096))
    (run / "config.yaml").write_text("name: run\nseed: 1\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n')
    (run / "train.log").write_text("")  # Hydra's job log, empty as tnl trains
    cache = root / "cache"
    (cache / "tokenizers").mkdir(parents=True)
    (cache / "tokenizers" / "kept.txt").write_text("an earlier cache entry\n")
    return {"run": run, "corpus": corpus, "cache": cache, "missing": root / "missing"}


def _cli_child(argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> None:
    """A row's process: `python -m tnl ARGV` from `cwd` with `env`, its output in the two files. An exception that
    escapes prints its traceback and exits 1, as the interpreter would."""
    import tnl.cli

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    sys.argv = ["tnl", *argv]
    try:
        tnl.cli.main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _start_row(ctx, row: tuple[str, str, str], root: Path) -> dict:
    """The row's command on its own copy of the world, so that a row that does change a folder is the one blamed."""
    args, _, key = row
    world = _world(root)
    argv = args.format(**world).split()
    if argv[0] in ("train", "prepare-data") and not any(a.startswith("output_dir=") for a in argv):
        argv.append(f"output_dir={world['run']}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TNL_CACHE_DIR": str(world["cache"]),
           "TNL_DATA_DIR": str(SHARED_DATA)}
    env.pop("TNL_DEBUG", None)
    streams = (str(root / "stdout.txt"), str(root / "stderr.txt"))
    before = folder_hash(world[key])
    proc = ctx.Process(target=_cli_child, args=(argv, str(world["corpus"]), env, *streams))
    proc.start()
    return {"proc": proc, "key": key, "before": before, "world": world, "stderr_file": streams[1]}


def _finish_row(started: dict) -> dict:
    proc, world = started["proc"], started["world"]
    proc.join(300)
    if proc.is_alive():
        proc.kill()
        proc.join()
    stderr = Path(started["stderr_file"]).read_text(errors="replace")
    changed = folder_hash(world[started["key"]]) != started["before"]
    return {"rc": proc.exitcode, "stderr": stderr, "changed": changed, "world": world}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tnl.cli", "tnl.commands.train", "tnl.commands.evaluate", "tnl.commands.export",
                                "tnl.commands.prepare_data", "tests.cli.test_hostile_inputs"])
    rows = ROWS + HYDRA_ROWS
    results: dict = {}
    running: list[tuple[str, dict]] = []
    for row in rows:
        if len(running) == 4:
            args, started = running.pop(0)
            results[args] = _finish_row(started)
        running.append((row[0], _start_row(ctx, row, tmp_path_factory.mktemp("hostile"))))
    for args, started in running:
        results[args] = _finish_row(started)
    return results


def _check(row: tuple[str, str, str], outcomes: dict) -> None:
    args, expected, key = row
    got = outcomes[args]
    # a row that fails in the data work may first show datasets' progress bar; the message is the one line after it
    lines = [ln for ln in got["stderr"].splitlines() if ln.strip() and "examples/s]" not in ln]
    assert "Traceback" not in got["stderr"], got["stderr"][-3000:]
    assert not got["changed"], f"{key} folder changed"
    assert len(lines) == 1, got["stderr"][-3000:]  # exactly one line, and it is the error
    assert lines[0].startswith(expected.format(**got["world"])), got["stderr"][-3000:]
    assert got["rc"] == 2


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_input_is_one_line_and_changes_nothing(row, outcomes):
    _check(row, outcomes)


@pytest.mark.parametrize("row", HYDRA_ROWS, ids=[row[0] for row in HYDRA_ROWS])
def test_hydra_composition_error_is_one_line(row, outcomes):
    _check(row, outcomes)
