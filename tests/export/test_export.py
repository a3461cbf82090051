"""HF export loads without tnl and matches tnl; official layout both ways; safe folder replacement; hub upload."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

pytest.importorskip("tnl.model")

from tnl.export import ExportError, export_hf, export_official, load_pretrained, push_to_hub  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _model(vocab: int, **kw):
    from tests.helpers.eval_common import make_tnl

    return make_tnl(vocab, decoder_layers=3, linear_use_lrpe_list=[1, 0, 1], **kw)


def run_without_tnl(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in this venv's Python with tnl NOT importable: no site processing (so the editable install's
    .pth finder never loads), the venv's site-packages added by hand, no PYTHONPATH, a cwd outside the repo."""
    boot = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "hf_modules"), TRANSFORMERS_VERBOSITY="error")
    return subprocess.run([sys.executable, "-I", "-S", "-c", boot + code], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=600)


CHILD = r"""
import importlib, importlib.util, json, sys
from pathlib import Path
import torch
assert importlib.util.find_spec("tnl") is None, "tnl must not be importable here"
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1] if len(sys.argv) > 1 else "export"
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(folder)
pkg = type(model).__module__.rsplit(".", 1)[0]
assert pkg.startswith("transformers_modules"), type(model).__module__
cached = sorted(p.name for p in Path(sys.modules[pkg].__path__[0]).glob("*.py") if p.name != "__init__.py")
if importlib.util.find_spec("triton") is not None:  # every copied file imports, relative imports resolved
    for name in cached:
        importlib.import_module(pkg + "." + name[:-3])
ids = torch.tensor(json.load(open("ids.json")))
with torch.no_grad():
    logits = model(input_ids=ids).logits
gen = model.generate(ids[:1], max_new_tokens=6, do_sample=False)
torch.save({"logits": logits, "gen": gen, "text_ids": tok("The cat sat", add_special_tokens=False)["input_ids"],
            "cached": cached}, "out.pt")
print("OK", type(model).__name__)
"""


def test_hf_export_loads_without_tnl(tmp_path, tok):
    model = _model(len(tok))
    out = export_hf(model, tok, tmp_path / "export", max_shard_size="40KB",
                    train_config={"optim": {"lr": 0.001}, "train": {"max_steps": 7}},
                    eval_results={"split": "validation", "mode": "window", "max_length": 64,
                                  "word_perplexity": 123.456, "bits_per_byte": 1.5})
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "README.md", "tokenizer.json", "model.safetensors.index.json",
            "modeling_transnormer.py", "configuration_transnormer.py", "lightning_attn.py"} <= files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1  # sharded above max_shard_size
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_transnormer.TransnormerForCausalLM"
    for f in out.glob("*.py"):  # no import may leave the folder
        assert not re.search(r"^\s*(from\s+\.\.|from\s+tnl\b|import\s+tnl\b)", f.read_text(), re.M), f.name
    card = (out / "README.md").read_text()
    assert "123.4560" in card and "max_steps: 7" in card
    assert not list(tmp_path.glob(".export.tmp-*"))

    ids = torch.randint(1, len(tok), (2, 11))
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    proc = run_without_tnl(CHILD, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK TransnormerForCausalLM" in proc.stdout
    got = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        ref_gen = model.generate(ids[:1], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(got["logits"], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(got["gen"], ref_gen)
    assert got["text_ids"] == tok("The cat sat", add_special_tokens=False)["input_ids"]
    # transformers copied every file of the export's code (the closure of relative imports), and nothing else
    assert got["cached"] == sorted(f.name for f in out.glob("*.py"))
    assert {"tnl_settings.py", "ops_common.py"} <= set(got["cached"])  # tnl's shared modules came along


def test_flattened_code_passes_transformers_checks(tmp_path):
    """transformers' own loader helpers: the relative imports of the modeling file reach exactly the files written,
    and no file needs triton (or anything else outside torch and transformers) to load."""
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    from tnl.export.code import write_model_code

    written = write_model_code(tmp_path)
    needed = {Path(p).name for p in get_relative_import_files(str(tmp_path / "modeling_transnormer.py"))}
    assert needed | {"modeling_transnormer.py"} == set(written)
    assert {"lightning_attn.py", "configuration_transnormer.py", "cross_entropy.py", "srms_norm.py",
            "ops_common.py", "tnl_settings.py"} <= needed
    for name in written:
        assert set(get_imports(str(tmp_path / name))) <= {"torch", "transformers", *sys.stdlib_module_names}, name


def test_overwrite_rules_and_atomic_replace(tmp_path, tok, monkeypatch):
    model = _model(len(tok), attn_backend="torch")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(ExportError, match="overwrite"):
        export_hf(model, tok, target)
    with pytest.raises(ExportError, match="not a previous export .*no config.json.*only replaces a folder that holds"):
        export_hf(model, tok, target, overwrite=True)  # overwrite replaces previous exports only
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    (target / "keep.txt").unlink()
    export_hf(model, tok, target)  # a previous export, plus a file of the user's
    (target / "keep.txt").write_text("old")
    before = sorted(p.name for p in target.iterdir())

    import tnl.export.hf as hf_mod

    def boom(folder):
        (Path(folder) / "partial.py").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf_mod, "write_model_code", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_hf(model, tok, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == before  # the good folder survives a failed export
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    monkeypatch.undo()

    export_hf(model, tok, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").exists()
    assert json.loads((target / "config.json").read_text())["attn_backend"] == "auto"  # the export picks its kernel
    assert model.config.attn_backend == "torch"  # the live model is left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (tmp_path / "empty").mkdir()
    export_hf(model, tok, tmp_path / "empty")  # an empty folder is not "non-empty"


def test_export_made_before_the_redesign_loads():
    """An HF folder exported by tnl before its modules were reorganised (tests/export/fixtures/README.md) loads with
    today's code and gives the logits and greedy tokens the old code gave."""
    from safetensors.torch import load_file

    fixtures = Path(__file__).parent / "fixtures"
    expected = load_file(str(fixtures / "old_export_expected.safetensors"))
    loaded = load_pretrained(fixtures / "old_export")
    assert loaded.kind == "hf" and loaded.model.config.linear_use_lrpe_list == [1, 0]
    with torch.no_grad():
        logits = loaded.model(input_ids=expected["input_ids"]).logits
        gen = loaded.model.generate(expected["input_ids"][:1], max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    assert torch.equal(gen, expected["generated"])


def _official_tensors(cfg: dict, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """An OpenNLPLab-layout state dict built from their documented parameter names and shapes."""
    d, hid, glu, v = cfg["decoder_embed_dim"], cfg["hidden_dim"], cfg["glu_dim"], cfg["vocab_size"]
    h = cfg["decoder_attention_heads"]
    sd = {"model.embed_tokens.weight": torch.randn(v, d, generator=rng) * 0.05}
    for i in range(cfg["decoder_layers"]):
        p = f"model.layers.{i}."
        sd[p + "token_mixer.qkvu_proj.weight"] = torch.randn(4 * hid, d, generator=rng) * 0.05
        sd[p + "token_mixer.out_proj.weight"] = torch.randn(d, hid, generator=rng) * 0.05
        if cfg["linear_use_lrpe_list"][i]:
            sd[p + "token_mixer.lrpe.theta"] = torch.rand(h, 1, d // h, generator=rng)
        sd[p + "channel_mixer.l1.weight"] = torch.randn(glu, d, generator=rng) * 0.05
        sd[p + "channel_mixer.l2.weight"] = torch.randn(glu, d, generator=rng) * 0.05
        sd[p + "channel_mixer.l3.weight"] = torch.randn(d, glu, generator=rng) * 0.05
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    sd["model.decoder.version"] = torch.tensor([3.0])  # a fairseq leftover their checkpoints may carry
    return sd


def test_load_official_checkpoint(tmp_path, tok):
    cfg = {"model_type": "transnormer", "architectures": ["TransnormerForCausalLM"], "pad_token_id": 0,
           "bos_token_id": 0, "eos_token_id": 0, "vocab_size": len(tok), "use_cache": True, "init_std": 0.02,
           "decoder_embed_dim": 32, "decoder_layers": 2, "decoder_attention_heads": 4, "no_scale_embedding": False,
           "add_bos_token": False, "norm_type": "simplermsnorm", "linear_use_lrpe_list": [1, 0], "hidden_dim": 32,
           "linear_act_fun": "silu", "glu_dim": 48, "bias": False, "torch_dtype": "float32",
           "auto_map": {"AutoModelForCausalLM": "OpenNLPLab/TransNormerLLM-385M--modeling_transnormer.X"}}
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = _official_tensors(cfg, torch.Generator().manual_seed(0))
    torch.save(sd, folder / "pytorch_model.bin")
    tok.save_pretrained(folder)
    loaded = load_pretrained(folder)
    assert loaded.kind == "official"
    got = loaded.model.state_dict()
    for name, t in sd.items():
        if "version" not in name:
            assert torch.equal(got[name], t), name
    assert loaded.model.config.decoder_attention_heads == 4 and loaded.model.config.token_mixer == "tnl"

    # and back: tnl -> official -> tnl keeps logits; the config holds only official fields
    out = export_official(loaded.model, tok, tmp_path / "again", max_shard_size="30KB")
    written = json.loads((out / "config.json").read_text())
    assert not {"token_mixer", "decay_schedule", "attn_backend"} & set(written)
    assert set(written) - {"model_type", "architectures", "torch_dtype", "auto_map"} <= set(cfg) | {
        "tie_word_embeddings"}
    assert written["auto_map"]["AutoModelForCausalLM"].startswith("OpenNLPLab/")
    again = load_pretrained(out)
    ids = torch.randint(1, len(tok), (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, loaded.model(ids).logits)


def test_official_refuses_tnl_only_features(tmp_path, tok):
    model = _model(len(tok), token_mixer="softmax")
    with pytest.raises(ExportError, match="token_mixer"):
        export_official(model, tok, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _fake_run(tmp_path: Path, model, tok, prefix: str = "") -> Path:
    """A training run folder as tnl/train writes it (Accelerate drops the tied lm_head from safetensors)."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from tnl.checkpoint import write_checksums

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_5"
    ckpt.mkdir(parents=True)
    (run / "model_config.json").write_text(json.dumps(model.config.to_dict()))
    tok.save_pretrained(run / "tokenizer")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"model": {"decoder_layers": 3}, "train": {"max_steps": 5}}),
                   run / ".hydra" / "config.yaml")
    sd = {prefix + k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(ckpt / "model.safetensors"))
    write_checksums(ckpt)
    (run / "checkpoints" / "step_2").mkdir()
    return run


@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_checkpoint_loading_and_eval_match(tmp_path, tok, prefix):
    from tnl.eval import evaluate_documents

    model = _model(len(tok))
    run = _fake_run(tmp_path, model, tok, prefix)
    for path in (run, run / "checkpoints", run / "checkpoints" / "step_5"):  # step_2 has no weights: skipped
        loaded = load_pretrained(path)
        assert loaded.kind == "checkpoint" and loaded.run_dir == run and loaded.path.name == "step_5"
        assert loaded.train_config["train"]["max_steps"] == 5
        ids = torch.randint(1, len(tok), (1, 13))
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits)
    docs = [" = A = \n \n the cat sat on a mat . \n"]
    a = evaluate_documents(model, tok, docs, max_length=8)
    b = evaluate_documents(loaded.model, loaded.tokenizer, docs, max_length=8)
    assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=1e-6)


def test_corrupt_newest_checkpoint_is_skipped_and_refused(tmp_path, tok, capsys):
    import shutil

    model = _model(len(tok))
    run = _fake_run(tmp_path, model, tok)
    newest = run / "checkpoints" / "step_7"
    shutil.copytree(run / "checkpoints" / "step_5", newest)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a save cut short
    loaded = load_pretrained(run)
    assert loaded.path.name == "step_5"
    assert "step_7 is unusable" in capsys.readouterr().out
    with pytest.raises(ExportError, match="step_7 is broken .*checksum"):
        load_pretrained(newest)
    (run / "checkpoints" / "step_5" / "checksums.json").write_text("{")
    with pytest.raises(ExportError, match="no valid checkpoints"):
        load_pretrained(run)


def test_bad_paths(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        load_pretrained(tmp_path / "f.txt")
    with pytest.raises(ExportError, match="not a model"):
        load_pretrained(tmp_path)


class _FakeApi:
    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        if self.fail:
            raise self.fail
        return f"https://huggingface.co/{kw['repo_id']}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))


def test_push_to_hub_with_fake_network(tmp_path, tok, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    out = export_hf(_model(len(tok)), tok, tmp_path / "exp")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ExportError, match="HF_HUB_OFFLINE"):
        push_to_hub(out, "me/tiny")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ExportError, match="not logged in"):
        push_to_hub(out, "me/tiny")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    api = _FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    assert push_to_hub(out, "me/tiny", private=True) == "https://huggingface.co/me/tiny"
    assert api.calls[0] == ("create_repo", {"repo_id": "me/tiny", "private": True, "exist_ok": True,
                                            "repo_type": "model"})
    assert api.calls[1][0] == "upload_folder" and api.calls[1][1]["folder_path"] == str(out)
    with pytest.raises(ExportError, match="ConnectionError.*network"):
        push_to_hub(out, "me/tiny", api=_FakeApi(ConnectionError("Failed to connect")))
    with pytest.raises(ExportError, match="repository id"):
        push_to_hub(out, "tiny")


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TNL_CACHE_DIR=str(cwd / "cache"))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_evaluate_and_export_configs_in_process(tmp_path, tok):
    """configs/evaluate.yaml + run_evaluation, configs/export.yaml + run_export, on a run folder."""
    from tnl.eval import evaluate_documents, fingerprint_model, run_evaluation
    from tnl.export.run import run_export

    model = _model(len(tok))
    run = _fake_run(tmp_path, model, tok)
    text = " = Title = \n \n the cat sat on a mat . the dog ran to the house . \n"
    (tmp_path / "val.txt").write_text(text)
    cfg = _compose("evaluate", [f"model_path={run}", "data=text", f"data.path={tmp_path}",
                                "data.files.validation=[val.txt]", "data.sample_by=document", "eval.max_length=8",
                                "eval.progress=false"])
    res = run_evaluation(cfg, log=lambda *_: None)
    saved = json.loads((run / "eval_validation_window.json").read_text())
    assert {"word_perplexity", "bits_per_byte", "model_fingerprint", "data_fingerprint", "split"} <= set(saved)
    direct = evaluate_documents(model, tok, [text], max_length=8)
    assert saved["word_perplexity"] == pytest.approx(direct["word_perplexity"], rel=1e-6)
    assert saved["model_fingerprint"] == fingerprint_model(model) == res["model_fingerprint"]

    cfg = _compose("export", [f"checkpoint={run}", f"out_dir={tmp_path / 'hf'}"])
    out = run_export(cfg, log=lambda *_: None)
    assert f"{saved['word_perplexity']:.4f}" in (out / "README.md").read_text()
    assert fingerprint_model(load_pretrained(out).model) == saved["model_fingerprint"]
    with pytest.raises(ExportError, match="not empty"):
        run_export(cfg, log=lambda *_: None)
    cfg = _compose("export", [f"checkpoint={run}", f"out_dir={tmp_path / 'off'}", "format=official"])
    assert json.loads((run_export(cfg, log=lambda *_: None) / "config.json").read_text())["model_type"] == "transnormer"


def test_scripts_report_errors_in_one_line(tmp_path):
    proc = _script("evaluate.py", f"model_path={tmp_path / 'missing'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    proc = _script("export.py", f"checkpoint={tmp_path}", f"out_dir={tmp_path / 'out'}", "format=zip", cwd=tmp_path)
    assert proc.returncode == 2 and "format" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_real_training_run_checkpoint(tmp_path, tok):
    """train.py's own checkpoint (Accelerate save_state) evaluates like the loop's final eval and exports."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)] + ["the", "a", "."]
    for split, n in (("train", 30), ("validation", 4)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(80))}) + "\n")
    run = tmp_path / "run"
    data = [f"data.path={tmp_path}", "data.files.train=[train.jsonl]", "data.files.validation=[validation.jsonl]"]
    train = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "model=tiny", "model.vocab_size=null", "data=text", *data,
         f"data.cache_dir={tmp_path / 'cache'}", "tokenizer.vocab_size=300", f"output_dir={run}", "train.seq_len=32",
         "train.batch_size=4", "train.mixed_precision=no", "train.eval_every=0", "train.num_workers=0",
         "train.progress=false", "train.max_steps=4", "train.save_every=2", "train.export=false"],
        cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"), capture_output=True,
        text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    loop_eval = json.loads((run / "eval_validation.json").read_text())
    proc = _script("evaluate.py", f"model_path={run / 'checkpoints' / 'step_4'}", "data=text", *data,
                   "eval.max_length=32", "eval.progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads((run / "eval_validation_window.json").read_text())
    assert ours["word_perplexity"] == pytest.approx(loop_eval["word_perplexity"], rel=1e-6)
    proc = _script("export.py", f"checkpoint={run}", f"out_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_steps: 4" in (tmp_path / "hf" / "README.md").read_text()
