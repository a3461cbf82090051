"""The model's acceptance checks (tests/helpers/model_checks.py) on the CPU with the tiny config: the naive vs the
PyTorch attention backend, real torch.compile, and flat decode memory. test_model_gpu.py runs them on a GPU."""

from __future__ import annotations

import torch

from tests.helpers.model_checks import check_backends, check_compile, check_flat_memory
from tools.model_configs import load_config

SEQ = 200  # more than one 64-token block, so the backends really differ


def test_naive_backend_matches_torch_backend(capsys):
    assert check_backends(load_config("tiny"), "cpu", torch.bfloat16, ("naive", "torch"), batch=2, seq=SEQ)
    assert capsys.readouterr().out.count("-> OK") == 4  # fp32 and bf16, plain and packed


def test_compiled_training_matches_eager(capsys):
    """Real torch.compile on the CPU (the mixer's compiled path: SiLU(q), SiLU(k) handed to the attention op), in
    fp32 and bf16 autocast."""
    assert check_compile(load_config("tiny", decoder_layers=2), "cpu", torch.bfloat16, batch=2, seq=SEQ)
    out = capsys.readouterr().out
    assert out.count("-> OK") == 2 and "[compile] fp32 compiled vs eager" in out


def test_decode_memory_is_flat():
    assert check_flat_memory(load_config("tiny"), "cpu", torch.bfloat16, prompt=128, steps=8)
