"""End-to-end training behaviour: exact resume after SIGKILL, corrupt checkpoints, signals, config errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small random-word corpus as jsonl (train/validation), so tests need no downloaded data."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), 60, {"train": 60, "validation": 8}, 120)


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"), "model=tiny", "model.vocab_size=null", "data=text",
        f"data.path={corpus}", "data.files.train=[train.jsonl]", "data.files.validation=[validation.jsonl]",
        f"data.cache_dir={out.parent / 'cache'}", "tokenizer.vocab_size=300", f"output_dir={out}",
        "train.seq_len=32", "train.batch_size=4", "train.grad_accum=2", "train.mixed_precision=no",
        "train.log_every=1", "train.eval_every=0", "train.num_workers=0", "train.progress=false",
        "train.final_eval=false", "train.export=false", "optim.lr=3e-3", "scheduler.warmup_steps=2",
        "++model.dropout=0.1", *extra,
    ]


def _run(args, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.update(env_extra or {})
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kw)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "split" not in r}


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_unbroken_run_bit_for_bit(corpus, tmp_path):
    ref = tmp_path / "ref"
    done = _run(_args(corpus, ref, "train.max_steps=12", "train.save_every=4"))
    assert done.returncode == 0, done.stderr[-2000:]
    broken = tmp_path / "broken"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(_args(corpus, broken, "train.max_steps=12", "train.save_every=4"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (broken / "checkpoints" / "step_8").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (broken / "checkpoints" / "step_8").exists()
    resumed = _run(_args(corpus, broken, "train.max_steps=12", "train.save_every=4"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    ref_losses, got = _losses(ref), _losses(broken)
    assert sorted(got) == list(range(1, 13))
    assert got == ref_losses  # exact float equality on CPU


def test_corrupt_newest_checkpoint_falls_back_and_signal_saves(corpus, tmp_path):
    out = tmp_path / "run"
    first = _run(_args(corpus, out, "train.max_steps=4", "train.save_every=2", "train.keep_last=3"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "deprecated" not in first.stdout + first.stderr  # e.g. transformers' past_key_values -> cache rename
    newest = out / "checkpoints" / "step_4"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    again = _run(_args(corpus, out, "train.max_steps=5", "train.save_every=0"))
    assert again.returncode == 0, again.stderr[-2000:]
    text = again.stdout + again.stderr
    assert "step_4 is unusable" in text and "resumed from" in text and "step_2" in text


def test_sigterm_saves_a_checkpoint_before_exit(corpus, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(_args(corpus, out, "train.max_steps=100000", "train.save_every=0"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    saved = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")]
    assert len(saved) == 1 and "checkpoint (signal SIGTERM) saved" in output


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_stpes=3", "max_stpes"),
        ("train.batch_size=many", "batch_size"),
        ("+model.decoder_layrs=3", "unknown model field"),
        ("train.compile_memory_budget=1.5", "compile_memory_budget=1.5 must be in (0, 1]"),
    ],
)
def test_config_mistakes_fail_at_start(corpus, tmp_path, override, message):
    res = _run(_args(corpus, tmp_path / "run", "train.max_steps=2", override))
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_two_cpu_processes_over_gloo_match_one_process_at_the_same_global_batch(corpus, tmp_path):
    """Two compiled DDP processes against one eager process: losses, gradient norms and the parameters after 3 steps
    agree. With optim.eps=1 AdamW's update follows the gradient's size (about lr * gradient) instead of only its sign,
    and no clipping happens, so a gradient off by a factor of 2 moves the parameters by about their whole change,
    orders of magnitude over the tolerance."""
    same = ("train.max_steps=3", "train.save_every=3", "++model.dropout=0.0", "optim.eps=1.0", "train.grad_clip=1e9")
    # 1 process x 2 micro-batches of 4 and 2 processes x 1 micro-batch of 4 see the same 8 windows per step
    one = _run(_args(corpus, tmp_path / "one", *same))
    assert one.returncode == 0, one.stderr[-2000:]
    # (the 2-process run also uses the fused cross-entropy: its weight gradients must reach DDP's all-reduce)
    # compiled (torch.compile with DDP's bucketed all-reduce); final evaluation and export on: rank 0 runs them
    # alone after the others have left
    args = _args(corpus, tmp_path / "two", *same, "train.grad_accum=1", "train.loss_chunk_size=48",
                 "train.compile=true", "train.final_eval=true", "train.export=true")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    two = _run(torchrun + args[1:], cwd=ROOT, env_extra={"ACCELERATE_USE_CPU": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    # the setup line and row: a launch that fell back to one process (or another strategy) would say so
    assert "distributed: single, world size 1, device cpu" in one.stdout
    assert two.stdout.count("distributed: DDP, world size 2, device cpu") == 1  # printed by rank 0 only
    assert two.stdout.count("run folder:") == 1 and two.stdout.count("HF export:") == 1  # so is the summary
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                   if "split" not in json.loads(x)] for name in ("one", "two")}
    setup = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("split") == "setup"]
    assert [(r["strategy"], r["world_size"], r["device"]) for r in setup] == [("DDP", 2, "cpu")]
    assert rows["two"][0]["tokens_seen"] == 8 * 32  # both ranks' tokens counted
    assert [r["step"] for r in rows["one"]] == [r["step"] for r in rows["two"]] == [1, 2, 3]
    for a, b in zip(rows["one"], rows["two"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["lr"] == a["lr"]  # one schedule step per optimizer step, whatever the number of processes
    from safetensors.torch import load_file

    p1, p2 = (load_file(str(tmp_path / n / "checkpoints" / "step_3" / "model.safetensors")) for n in ("one", "two"))
    assert p1.keys() == p2.keys()
    worst = max((p2[k] - p1[k]).abs().max().item() for k in p1)
    assert worst < 1e-7, worst  # found 4e-9; gradients halved on each rank: 8e-4
    exported = load_file(str(tmp_path / "two" / "export" / "model.safetensors"))
    assert all(torch.equal(exported[k], p2[k]) for k in p2)  # the export is the last checkpoint's weights


def test_diverging_run_skips_non_finite_steps_then_aborts_naming_the_last_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    res = _run(_args(corpus, out, "train.max_steps=30", "train.save_every=1", "train.max_bad_steps=3",
                     "optim.lr=1e30", "scheduler=constant", "scheduler.warmup_steps=0", "train.grad_clip=0"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 3 non-finite steps in a row") and "last good checkpoint is step_" in last
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] >= 2 and rows[-1]["loss"] is None  # the skipped loss is logged as null


@pytest.mark.slow
def test_wandb_offline_run_resumes_with_the_same_run_id(corpus, tmp_path):
    out = tmp_path / "run"
    for steps in (2, 4):
        res = _run(_args(corpus, out, f"train.max_steps={steps}", "train.save_every=2", "logger=wandb"),
                   env_extra={"WANDB_SILENT": "true"})
        assert res.returncode == 0, res.stderr[-2000:]
    states = [json.loads((out / "checkpoints" / f"step_{s}" / "trainer_state.json").read_text()) for s in (2, 4)]
    run_id = states[0]["wandb_run_id"]
    assert run_id and states[1]["wandb_run_id"] == run_id
    runs = sorted(p.name for p in (out / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert len(runs) == 2 and all(r.endswith(run_id) for r in runs)


def test_tokenizer_larger_than_the_model_embedding_is_refused():
    from omegaconf import OmegaConf
    from transformers import PreTrainedTokenizerFast

    from tnl.data.tokenizer import train_bpe
    from tnl.train.loop import TrainError, build_model

    docs = __import__("datasets").Dataset.from_dict({"text": [f"token{i} word{i % 7} " * 5 for i in range(200)]})
    tok: PreTrainedTokenizerFast = train_bpe(docs, 400)
    model_cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    model_cfg.vocab_size = 100
    with pytest.raises(TrainError, match="raise model.vocab_size"):
        build_model(OmegaConf.create({"model": model_cfg}), tok)
    model_cfg.vocab_size = None
    model = build_model(OmegaConf.create({"model": model_cfg}), tok)
    assert model.config.vocab_size >= len(tok) and model.config.vocab_size % 64 == 0
    assert model.config.eos_token_id == tok.eos_token_id


@pytest.mark.slow
def test_compile_activation_checkpointing_and_chunked_loss_train_like_eager(corpus, tmp_path):
    base = ("train.max_steps=3", "train.save_every=3", "++model.dropout=0.0")
    runs = {"eager": (), "ckpt": ("train.activation_checkpointing=true",), "compile": ("train.compile=true",),
            "chunked_loss": ("train.loss_chunk_size=48",)}
    losses = {}
    for name, extra in runs.items():
        res = _run(_args(corpus, tmp_path / name, *base, *extra))
        assert res.returncode == 0, res.stderr[-2000:]
        losses[name] = _losses(tmp_path / name)
    for name in ("ckpt", "compile", "chunked_loss"):
        for step, value in losses["eager"].items():
            assert losses[name][step] == pytest.approx(value, rel=1e-4)


def test_multirun_sweep_gives_each_job_its_own_folder(corpus, tmp_path):
    out = tmp_path / "sweep"
    args = _args(corpus, out, "train.max_steps=2", "train.save_every=2")
    res = _run([args[0], args[1], "-m", *args[2:], "train.seed=1,2"])
    assert res.returncode == 0, res.stderr[-2000:]
    for job in ("0", "1"):
        assert (out / job / "checkpoints" / "step_2" / "checksums.json").exists()
    seeds = [json.loads((out / j / "checkpoints/step_2/trainer_state.json").read_text())["sampler"]["seed"]
             for j in ("0", "1")]
    assert seeds == [1, 2]


def test_train_attn_backend_sets_the_model_config_not_the_environment(monkeypatch):
    """train.attn_backend reaches the built model's config (where the model group leaves "auto"); the environment
    is untouched and model_config.json (model_config) keeps the model group's value."""
    from omegaconf import OmegaConf

    from tests.helpers.eval_common import make_tokenizer
    from tnl.train.loop import build_model, model_config

    monkeypatch.delenv("TNL_ATTN_BACKEND", raising=False)
    tok = make_tokenizer()
    model_cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    model_cfg.vocab_size = None
    cfg = OmegaConf.create({"model": model_cfg, "train": {"attn_backend": "naive"}})
    model = build_model(cfg, tok)
    assert model.config.attn_backend == "naive"
    assert "TNL_ATTN_BACKEND" not in os.environ
    assert model_config(cfg, tok).attn_backend == "auto"
    cfg.model.attn_backend = "torch"  # the model group's own choice wins, as it did over the old variable
    assert build_model(cfg, tok).config.attn_backend == "torch"
    cfg.model.attn_backend, cfg.train.attn_backend = "auto", "auto"
    auto = build_model(cfg, tok)
    assert auto.config.attn_backend == "auto"
    # same weights, the naive backend and the default one: the same logits (each backend is correct)
    model.load_state_dict(auto.state_dict())
    ids = torch.randint(0, len(tok), (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, auto.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
