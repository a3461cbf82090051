"""A sharded FSDP checkpoint (`pytorch_model_fsdp_0/`, torch.distributed.checkpoint) loads, evaluates and exports in
one process without a GPU; checksums cover the files in a checkpoint's subfolders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.helpers.eval_common import make_tnl

pytest.importorskip("tnl.model")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from tnl.checkpoint import verify, write_checksums  # noqa: E402
from tnl.export import ExportError, load_pretrained  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _run(root: Path, model, tok, sharded: bool) -> Path:
    """A run folder whose step_5 holds the weights as Accelerate saves them: FSDP's SHARDED_STATE_DICT writes
    {"model": state_dict} with torch.distributed.checkpoint into pytorch_model_fsdp_0/ (one process writes the
    same format as several), the others model.safetensors without the tied lm_head."""
    from safetensors.torch import save_file

    ckpt = root / "checkpoints" / "step_5"
    ckpt.mkdir(parents=True)
    (root / "model_config.json").write_text(json.dumps(model.config.to_dict()))
    tok.save_pretrained(root / "tokenizer")
    if sharded:
        # random, full-precision values a lossy save would change
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        dcp.save({"model": sd}, checkpoint_id=str(ckpt / "pytorch_model_fsdp_0"), no_dist=True)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
                  str(ckpt / "model.safetensors"))
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 5}))
    write_checksums(ckpt)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    model = make_tnl(len(tok), seed=3, decoder_layers=2)
    with torch.no_grad():  # away from the initialisation, so a missed tensor would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    root = tmp_path_factory.mktemp("runs")
    return model, _run(root / "sharded", model, tok, True), _run(root / "flat", model, tok, False)


pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def test_sharded_checkpoint_loads_bit_exact_from_the_checkpoint_and_the_run(runs):
    model, sharded, _flat = runs
    ckpt = sharded / "checkpoints" / "step_5"
    assert (ckpt / "pytorch_model_fsdp_0" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    expected = model.state_dict()
    for path in (ckpt, sharded):
        loaded = load_pretrained(path, log=lambda *_: None)
        assert loaded.kind == "checkpoint" and loaded.path == ckpt
        got = loaded.model.state_dict()
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k].dtype == expected[k].dtype and torch.equal(got[k], expected[k]), k


def _export(checkpoint: Path, out: Path) -> dict[str, torch.Tensor]:
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file

    from tnl.export.run import run_export

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="export", overrides=[f"checkpoint={checkpoint}", f"out_dir={out}"])
    folder = run_export(cfg, log=lambda *_: None)
    return load_file(str(folder / "model.safetensors")), json.loads((folder / "config.json").read_text())


def test_export_of_the_sharded_checkpoint_equals_the_export_of_the_unsharded_one(runs, tmp_path):
    _model, sharded, flat = runs
    (a, config_a), (b, config_b) = (_export(run / "checkpoints" / "step_5", tmp_path / run.name)
                                    for run in (sharded, flat))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert config_a == config_b


def test_checksums_cover_subfolders_and_a_corrupt_shard_is_refused(runs, tmp_path):
    import shutil

    _model, sharded, _flat = runs
    run = tmp_path / "run"
    shutil.copytree(sharded, run)
    ckpt = run / "checkpoints" / "step_5"
    sums = json.loads((ckpt / "checksums.json").read_text())
    shards = sorted(p.relative_to(ckpt).as_posix() for p in (ckpt / "pytorch_model_fsdp_0").iterdir())
    assert len(shards) == 2 and set(shards) <= set(sums)  # the shard file and its .metadata
    shard = next(ckpt / s for s in shards if s.endswith(".distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in a tensor: only the checksum can tell
    shard.write_bytes(bytes(data))
    assert verify(ckpt) == f"{shard.relative_to(ckpt).as_posix()} does not match its checksum (truncated or corrupt)"
    with pytest.raises(ExportError, match="step_5 is broken .*checksum"):
        load_pretrained(ckpt)
    with pytest.raises(ExportError, match="no valid checkpoints"):
        load_pretrained(run, log=lambda *_: None)
    shard.write_bytes(shard.read_bytes()[:40])  # cut short: unreadable, one line even unverified
    with pytest.raises(ExportError, match=r"cannot read the weights in .*pytorch_model_fsdp_0"):
        load_pretrained(ckpt, verify=False)


def test_flat_checksums_written_before_subfolders_were_covered_still_verify(tmp_path):
    folder = tmp_path / "step_1"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "sub" / "x.bin").write_bytes(b"shard")
    old = {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}  # the old format: top-level names only
    (folder / "checksums.json").write_text(json.dumps(old))
    assert verify(folder) is None
    (folder / "model.safetensors").write_bytes(b"weightz")
    assert verify(folder) == "model.safetensors does not match its checksum (truncated or corrupt)"


def test_a_two_process_fsdp2_checkpoint_consolidates_to_the_gathered_weights(tok, tmp_path):
    """Two gloo processes on the CPU train a tiny model sharded with FSDP2 (torch's fully_shard; Accelerate itself
    runs FSDP on GPUs only) and save it as Accelerate does: one shard file per process. Loading it in this process
    gives the full state dict the processes gathered, bit for bit; losses and weights match one process training on
    the same global batch."""
    import os
    import subprocess
    import sys

    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547",
                          str(Path(__file__).parent / "fsdp2_checkpoint.py"), str(ckpt), str(len(tok))],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    shards = sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    full = torch.load(ckpt / "full.pt", weights_only=True)
    (ckpt / "full.pt").unlink()
    run = ckpt.parents[1]
    (run / "model_config.json").write_text(json.dumps(make_tnl(len(tok), decoder_layers=2).config.to_dict()))
    tok.save_pretrained(run / "tokenizer")
    write_checksums(ckpt)
    loaded = load_pretrained(ckpt).model.state_dict()
    assert loaded.keys() == full.keys()
    for k in full:
        assert torch.equal(loaded[k], full[k]), k
    # one process, the whole global batch: a gradient off by the number of processes would move the weights by
    # about their whole change (lr 0.1), far over the tolerance
    sys.path.insert(0, str(Path(__file__).parent))
    from fsdp2_checkpoint import batch

    one = make_tnl(len(tok), seed=3, decoder_layers=2).train()
    start = {k: v.clone() for k, v in one.state_dict().items()}
    optimizer = torch.optim.AdamW(one.parameters(), lr=0.1, eps=1.0)
    ids, losses = batch(len(tok), 2), []
    for _ in range(2):
        loss = one(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert json.loads((ckpt / "losses.json").read_text()) == pytest.approx(losses, rel=1e-5)
    for k, v in one.state_dict().items():
        change = (v - start[k]).abs().max().item()
        assert (loaded[k] - v).abs().max().item() <= 1e-3 * max(change, 1e-3), k


def _sharded_checkpoint(folder: Path, model, step: int) -> dict[str, torch.Tensor]:
    """`folder` as a sharded checkpoint of `model` at `step` after a random change of its weights; those weights."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True)
    dcp.save({"model": sd}, checkpoint_id=str(folder / "pytorch_model_fsdp_0"), no_dist=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    write_checksums(folder)
    return sd


@pytest.mark.parametrize("keep_best, best_saved", [(True, True), (False, True), (True, False)])
def test_the_final_model_of_a_sharded_run_is_the_chosen_checkpoint_consolidated(runs, tok, tmp_path, keep_best,
                                                                                 best_saved):
    """Under FSDP no process holds whole weights, so the final evaluation and export rebuild the model from the
    chosen checkpoint: the best one (step 3) when kept, the last one (step 5) otherwise or when the best folder
    is of another step, each bit-exact."""
    from tnl.train.best import BestTracker, final_model

    model, sharded, _flat = runs
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("model_config.json", "tokenizer"):
        (run / name).symlink_to(sharded / name)
    source = make_tnl(len(tok), seed=4, decoder_layers=2)
    best_sd = _sharded_checkpoint(run / "checkpoints" / "best", source, 3 if best_saved else 1)
    last_sd = _sharded_checkpoint(run / "checkpoints" / "step_5", source, 5)
    best = BestTracker(best_step=3, best_val_loss=1.5)
    lines: list[str] = []
    live = make_tnl(len(tok), seed=5, decoder_layers=2)  # the live (sharded) model: never what is evaluated
    got, evaluated = final_model(live, run / "checkpoints", best, keep_best, 5, torch.device("cpu"), torch.bfloat16,
                                 lines.append)
    expected, step = (best_sd, 3) if keep_best and best_saved else (last_sd, None)
    assert evaluated == step and got is not live
    state = got.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    # it scores in the training's mixed precision, as the trained model's (autocast-wrapped) forward does
    ids = torch.randint(0, len(tok), (2, 12), generator=torch.Generator().manual_seed(0))
    reference = make_tnl(len(tok), seed=4, decoder_layers=2).eval()
    reference.load_state_dict(expected)
    with torch.no_grad():
        logits = got.eval()(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(logits, reference(input_ids=ids).logits)
        assert not torch.equal(logits.float(), reference(input_ids=ids).logits)
    assert any("no checkpoint of the best step 3" in line for line in lines) == (keep_best and not best_saved)


def test_the_final_model_of_an_unsharded_run_is_the_live_model_with_the_best_weights(runs, tok, tmp_path):
    from safetensors.torch import save_file

    from tnl.train.best import BestTracker, final_model

    root = tmp_path / "checkpoints"
    source = make_tnl(len(tok), seed=6, decoder_layers=2)
    best_sd = {k: v.detach().clone() for k, v in source.state_dict().items()}
    (root / "best").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in best_sd.items() if k != "lm_head.weight"},
              str(root / "best" / "model.safetensors"))
    (root / "best" / "trainer_state.json").write_text(json.dumps({"step": 2}))
    live = make_tnl(len(tok), seed=7, decoder_layers=2)
    got, evaluated = final_model(live, root, BestTracker(best_step=2, best_val_loss=1.0), True, 4,
                                 torch.device("cpu"), None, lambda *_: None)
    assert got is live and evaluated == 2
    assert all(torch.equal(got.state_dict()[k], best_sd[k]) for k in best_sd)
