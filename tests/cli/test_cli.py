"""The `tnl` command line: subcommands, one-line errors, and a tiny `tnl train` that trains, evaluates and exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[2]


def tnl(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m tnl ARGS` (what the `tnl` console script runs), from `cwd`, offline."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "tnl", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


def test_console_script_points_at_the_cli():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]
    assert section.strip() == 'tnl = "tnl.cli:main"'
    installed = Path(sys.executable).parent / "tnl"
    if installed.exists():  # `pip install -e .` put it beside this Python
        proc = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "prepare-data" in proc.stdout


def test_usage_and_unknown_commands(tmp_path):
    ok = tnl("--help", cwd=tmp_path)
    assert ok.returncode == 0
    assert all(name in ok.stdout for name in ("train", "evaluate", "export", "prepare-data"))
    bare = tnl(cwd=tmp_path)
    assert bare.returncode == 2 and "usage: tnl" in bare.stderr
    bad = tnl("trian", "x=1", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: unknown command 'trian'; choose one of train, evaluate, export, generate, prepare-data")


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "prepare-data", "prepare_data"])
def test_each_command_shows_its_hydra_config(tmp_path, command):
    proc = tnl(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = command.replace("-", "_")
    assert f"{job} is powered by Hydra" in proc.stdout  # Hydra's job name is the command, as with the old scripts
    assert ("model_path" in proc.stdout) == (command == "evaluate")


def test_user_mistakes_are_one_line_with_exit_code_2(tmp_path):
    proc = tnl("evaluate", f"model_path={tmp_path / 'missing'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"error: model_path {tmp_path / 'missing'} does not exist"
    (tmp_path / "out").mkdir()
    proc = tnl("export", f"checkpoint={tmp_path}", f"out_dir={tmp_path / 'out'}", "format=zip", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: format must be one of hf, official")
    debug = tnl("evaluate", f"model_path={tmp_path / 'missing'}", cwd=tmp_path, env={"TNL_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # TNL_DEBUG=1 shows where it came from


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), 40, {"train": 30, "validation": 4}, 80)


def test_tiny_train_run_trains_evaluates_and_exports(corpus, tmp_path):
    """`tnl train` = loop, then final evaluation and export into the run folder; the saved config records the
    cache folder it used (data.cache_dir null: $TNL_CACHE_DIR). `tnl prepare_data` fills the same cache with the
    splits training reads: here one file whose first data.validation_fraction of documents is held out as
    validation, and no test split."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    data = ["model=tiny", "model.vocab_size=null", "data=text", f"data.path={corpus / 'train.jsonl'}",
            "data.validation_fraction=0.1", "tokenizer.vocab_size=300"]
    env = {"TNL_CACHE_DIR": str(cache)}
    prep = tnl("prepare_data", *data, f"output_dir={tmp_path / 'prep'}", cwd=tmp_path, env=env)
    assert prep.returncode == 0, prep.stderr[-3000:]
    listed = {m.group(1) for m in re.finditer(r"^ *(\w+): +[\d,]+ tokens ", prep.stdout, re.M)}
    assert listed == {"train", "validation"}
    cached = sorted(p.name for p in (cache / "tokens").iterdir())
    assert len(cached) == 2  # train and validation token arrays

    proc = tnl("train", *data, f"output_dir={run}", "train.seq_len=32", "train.batch_size=4",
               "train.mixed_precision=no", "train.eval_every=0", "train.num_workers=0", "train.progress=false",
               "train.max_steps=3", "train.save_every=0", "train.attn_backend=torch", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (cache / "tokens").iterdir()) == cached  # prepare_data's caches were used
    for line in ("run folder:", "checkpoint:", "validation:  token ppl", "plot:", "HF export:"):
        assert line in proc.stdout
    assert (run / "checkpoints" / "step_3" / "checksums.json").exists()
    assert (run / "train.log").exists() and (run / ".hydra" / "config.yaml").exists()
    scores = json.loads((run / "eval_validation.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["split"] == "validation" and rows[-1]["word_perplexity"] == scores["word_perplexity"]
    assert {p.name for p in (run / "plots").iterdir()} == {"loss.png", "lr.png"}
    exported = json.loads((run / "export" / "config.json").read_text())
    assert exported["attn_backend"] == "auto"  # the export picks its own kernel
    assert f"{scores['word_perplexity']:.4f}" in (run / "export" / "README.md").read_text()
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["cache_dir"] == str(cache) and saved["train"]["attn_backend"] == "torch"
    assert json.loads((run / "model_config.json").read_text())["attn_backend"] == "auto"

