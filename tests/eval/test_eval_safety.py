"""`tnl evaluate` refuses an export whose weights do not match its checksums (verify=false skips the check), gives
one line for corrupt weights, and never loses the results of a finished evaluation to a folder it cannot write."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.export.test_export import _compose
from tests.export.test_export_safety import one_line_error, tnl_cli, tree_hash
from tests.helpers.eval_common import make_tnl, make_tokenizer
from tnl.eval import EvalError, run_evaluation
from tnl.eval.run import output_path, save_results
from tnl.export import export_hf

TEXT = " = Title = \n \n the cat sat on a mat . the dog ran to the house . \n"


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture
def export(tmp_path, tok):
    """An export over 1 MB of weights, and a validation text file beside it."""
    (tmp_path / "val.txt").write_text(TEXT)
    return export_hf(make_tnl(len(tok), decoder_embed_dim=128, decoder_layers=4, glu_dim=256), tok, tmp_path / "exp")


def _data(tmp_path: Path) -> list[str]:
    return ["data=text", f"data.path={tmp_path}", "data.files.validation=[val.txt]", "data.sample_by=document",
            "eval.max_length=8", "eval.progress=false"]


def test_zeroed_megabyte_is_refused_and_verify_false_runs(tmp_path, export):
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2
    data[mid - (1 << 19): mid + (1 << 19)] = bytes(1 << 20)
    weights.write_bytes(bytes(data))
    before = tree_hash(tmp_path)
    line = one_line_error(tnl_cli("evaluate", f"model_path={export}", *_data(tmp_path), cwd=tmp_path))
    assert "model.safetensors does not match its checksum" in line and "verify=false" in line
    assert tree_hash(tmp_path) == before
    proc = tnl_cli("evaluate", f"model_path={export}", *_data(tmp_path), "verify=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((export / "eval_validation_window.json").read_text())["num_documents"] == 1


def test_truncated_weights_give_one_line(tmp_path, export):
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = tree_hash(tmp_path)
    for extra in ([], ["verify=false"]):
        line = one_line_error(tnl_cli("evaluate", f"model_path={export}", *_data(tmp_path), *extra, cwd=tmp_path))
        assert ("cannot read the weights" if extra else "does not match its checksum") in line
    assert tree_hash(tmp_path) == before


def test_unwritable_output_is_refused_before_the_evaluation(tmp_path, export):
    """eval.output under a regular file (no folder can be made there, whoever runs the test) is refused up front."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    logs: list[str] = []
    cfg = _compose("evaluate", [f"model_path={export}", *_data(tmp_path), f"eval.output={blocker / 'r.json'}"])
    before = tree_hash(tmp_path)
    with pytest.raises(EvalError, match=r"eval.output .*r.json cannot be written \(.*a_file is a file, not a folder\)"):
        run_evaluation(cfg, log=logs.append)
    assert not any(line.startswith("data:") for line in logs)  # refused before any data was read or scored
    assert tree_hash(tmp_path) == before


def test_default_output_in_an_unwritable_folder_goes_elsewhere(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    blocker = tmp_path / "model_as_file"  # the model's folder cannot take a file: it is a file
    blocker.write_text("x")
    loaded = SimpleNamespace(run_dir=None, path=blocker)
    logs: list[str] = []
    out = output_path({}, loaded, "validation", "window", log=logs.append)
    assert out == work / "eval_validation_window-model_as_file.json"
    assert len(logs) == 1 and logs[0].startswith("WARNING:") and str(out) in logs[0]
    # a folder that stops being writable during the evaluation: the results still land somewhere, with a warning
    res = {"word_perplexity": 1.5, "model_path": str(blocker)}
    got = save_results(res, blocker / "eval.json", log=logs.append)
    assert got.parent == work and json.loads(got.read_text()) == res and "instead" in logs[-1]


def _chmod_binds(folder: Path) -> bool:
    """Whether a chmod 555 folder refuses new files here (not for root with CAP_DAC_OVERRIDE)."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_text("x")
        return False
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        (probe / "x").unlink(missing_ok=True)
        probe.rmdir()


def test_read_only_model_folder_is_announced(tmp_path, export, monkeypatch):
    if not _chmod_binds(tmp_path):
        pytest.skip("chmod 555 does not stop this user (root); test_default_output_in_an_unwritable_folder covers it")
    monkeypatch.chdir(tmp_path)
    export.chmod(0o555)
    try:
        logs: list[str] = []
        res = run_evaluation(_compose("evaluate", [f"model_path={export}", *_data(tmp_path)]), log=logs.append)
    finally:
        export.chmod(0o755)
    assert Path(res["output"]).parent == tmp_path and any("cannot be written" in line for line in logs)
