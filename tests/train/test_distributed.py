"""A multi-process launch trains with the setup it asked for, or stops at once with one line: Accelerate falls back
without a word (FSDP on CPU processes becomes DDP; processes without a GPU each train alone)."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.train.test_train import ROOT, _args, _run, corpus  # noqa: F401  (corpus: the module fixture)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]


@pytest.mark.parametrize("env, message", [
    # what `accelerate launch --config_file configs/accelerate/fsdp_2gpu.yaml` sets, on CPU processes
    ({"ACCELERATE_USE_CPU": "1", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
      "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"},
     "error: the launch asked for FSDP but Accelerate set up DDP on cpu"),
    # 2 processes and no GPU: without ACCELERATE_USE_CPU Accelerate gives each its own single-process run
    pytest.param({"ACCELERATE_USE_CPU": "0"},
                 "error: the launch started 2 processes but Accelerate set up single with world size 1 on cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs the launch is real")),
])
def test_a_launch_that_accelerate_falls_back_from_stops_before_training(corpus, tmp_path, env, message):  # noqa: F811
    out = tmp_path / "run"
    port = "--master_port=29541" if "ACCELERATE_USE_FSDP" in env else "--master_port=29542"
    res = _run(TORCHRUN + [port] + _args(corpus, out, "train.max_steps=2")[1:], cwd=ROOT, env_extra=env)
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("error: ")]
    # one line from each process, unless torchrun stopped the other one first (it ends the rest when one fails)
    assert 1 <= len(lines) <= 2 and all(ln.startswith(message) for ln in lines), res.stderr[-3000:]
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
