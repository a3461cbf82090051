"""Exports never replace their source or anything but a previous export; they carry checksums that loading checks;
corrupt weights, custom-code tokenizers and missing checkpoints give one-line errors; cards hold no local paths."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.export.test_export import _compose, _fake_run, _model
from tests.helpers.eval_common import make_tnl
from tnl.export import ExportError, export_hf, load_pretrained
from tnl.export.run import run_export

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"


def tree_hash(folder: Path) -> str:
    """sha256 over every path (files, folders, links) under `folder` and every file's bytes."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        if p.is_symlink():
            h.update(b"link:" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def tnl_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TNL_CACHE_DIR=str(cwd.parent / f"{cwd.name}-cache"))
    env.pop("TNL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tnl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture
def run(tmp_path, tok):
    return _fake_run(tmp_path, _model(len(tok)), tok)


def _export(checkpoint, out_dir, **kw):
    overrides = [f"checkpoint={checkpoint}", f"out_dir={out_dir}"] + [f"{k}={v}" for k, v in kw.items()]
    return run_export(_compose("export", overrides), log=lambda *_: None)


def test_export_into_its_own_run_is_refused_by_the_cli(tmp_path, run):
    """The data-loss case: `tnl export checkpoint=RUN out_dir=RUN overwrite=true` used to replace the run."""
    before = tree_hash(tmp_path)
    line = one_line_error(tnl_cli("export", f"checkpoint={run}", f"out_dir={run}", "overwrite=true", cwd=tmp_path))
    assert "out_dir" in line and "the folder being exported" in line
    line = one_line_error(tnl_cli("export", f"checkpoint={tmp_path / 'nope'}", f"out_dir={tmp_path / 'x'}",
                                  cwd=tmp_path))
    assert line.startswith(f"error: checkpoint {tmp_path / 'nope'} does not exist")  # the key the user typed
    assert tree_hash(tmp_path) == before


def test_refused_targets_leave_everything_unchanged(tmp_path, run):
    link = tmp_path / "link"
    link.symlink_to(run)
    user = tmp_path / "mine"
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "a.txt").write_text("precious")
    other_run = tmp_path / "other_run"
    shutil.copytree(run, other_run)
    ckpt = run / "checkpoints" / "step_5"
    cases = [  # (checkpoint, out_dir, expected text of the one-line error)
        (run, run, f"out_dir {run} is the folder being exported"),
        (ckpt, run, "is the folder being exported"),
        (run, run / "checkpoints", "is inside"),
        (ckpt, run / "checkpoints" / "step_5", "is inside"),
        (run, tmp_path, "contains"),
        (run, link, "the folder being exported"),  # a symlink to the run
        (link / "checkpoints" / "step_5", run, "the folder being exported"),  # the checkpoint through a symlink
        (run, user, "not a previous export .*subfolder notes/.*only replaces a folder that holds an export"),
        (run, other_run, "not a previous export .*holds checkpoints, part of a training run"),
        (run, tmp_path / "mine" / "notes" / "a.txt" / "x", "cannot write .*a.txt is a file, not a folder"),
    ]
    before = tree_hash(tmp_path)
    for checkpoint, out_dir, expected in cases:
        with pytest.raises(ExportError, match=expected):
            _export(checkpoint, out_dir, overwrite="true")
        assert tree_hash(tmp_path) == before, (checkpoint, out_dir)


def test_overwrite_replaces_previous_exports_only(tmp_path, run):
    logs = []
    cfg = _compose("export", [f"checkpoint={run}", f"out_dir={run / 'export'}", "overwrite=true"])
    run_export(cfg, log=logs.append)  # the run's own export folder (what tnl train writes) is allowed
    run_export(cfg, log=logs.append)
    assert "replaced the previous export" in logs[-1]
    old = tmp_path / "old"  # an export written before exports carried checksums still counts as one
    shutil.copytree(FIXTURES / "old_export", old)
    out = _export(run, old, overwrite="true")
    assert (out / "checksums.json").exists() and json.loads((out / "config.json").read_text())["decoder_layers"] == 3


def test_export_checksums_are_verified(tmp_path, tok):
    """A zeroed megabyte of an export's weights is refused; verify=false loads it; a pre-checksum export loads."""
    model = make_tnl(len(tok), decoder_embed_dim=128, decoder_layers=4, glu_dim=256)
    out = export_hf(model, tok, tmp_path / "exp")
    sums = json.loads((out / "checksums.json").read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json", "modeling_transnormer.py"} <= set(sums)
    (out / "README.md").write_text("edited card")  # the card is not checksummed: editing it before a push is fine
    load_pretrained(out)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2
    data[mid - (1 << 19): mid + (1 << 19)] = bytes(1 << 20)
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.safetensors does not match its checksum.*verify=false"):
        load_pretrained(out)
    assert load_pretrained(out, verify=False).kind == "hf"
    notes = []
    assert load_pretrained(FIXTURES / "old_export", log=notes.append).kind == "hf"
    assert len(notes) == 1 and "no checksums.json" in notes[0]


def test_corrupt_weights_give_one_line(tmp_path, tok, run):
    out = export_hf(_model(len(tok)), tok, tmp_path / "exp")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for path, kw in ((out, {"verify": False}), (run / "checkpoints" / "step_5", {"verify": False})):
        if path != out:
            w = path / "model.safetensors"
            w.write_bytes(b"\x08" + bytes(20))  # a cut-short header
        with pytest.raises(ExportError, match="cannot read the weights in .*model.safetensors .*SafetensorError.*"
                                              "corrupt, truncated"):
            load_pretrained(path, **kw)


def test_custom_code_tokenizer_names_the_real_reason(tmp_path, tok):
    out = export_hf(_model(len(tok)), tok, tmp_path / "exp")
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    cfg["tokenizer_class"] = "XTokenizer"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=r"needs its own code \(tokenization_x.XTokenizer.*does not run remote code"):
        load_pretrained(out, verify=False)


def test_model_card_holds_no_local_paths(tmp_path, tok):
    home = str(Path.home())
    train_config = {"data": {"path": f"{home}/corpus", "cache_dir": "/var/cache/tnl", "hub_path": "Salesforce/x",
                             "files": {"train": [f"{home}/corpus/train.txt"]}},
                    "output_dir": str(tmp_path / "run"), "train": {"max_steps": 7}}
    eval_results = {"split": "validation", "mode": "window", "max_length": 64, "word_perplexity": 12.5,
                    "model_path": str(tmp_path / "run"), "data_source": f"validation: local files {home}/c/v.txt"}
    out = export_hf(_model(len(tok)), tok, tmp_path / "exp", train_config=train_config, eval_results=eval_results)
    published = (out / "README.md").read_text() + (out / "eval_results.json").read_text()
    assert home not in published and str(tmp_path) not in published and "/var/cache" not in published
    assert "max_steps: 7" in published and "Salesforce/x" in published and "train.txt" in published
    assert "local files v.txt" in published
