"""GPU acceptance checks of the TNL model (tnl_385m, bf16 autocast), run on a CUDA machine with `pytest -m gpu -s`
(`-s` shows each check's numbers). The checks live in tests/helpers/model_checks.py; test_model_checks.py runs the
same checks on the CPU with the tiny config."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.model_checks import check_backends, check_compile, check_flat_memory, check_speed
from tools.model_configs import load_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONFIG = "tnl_385m"
CONTEXT, DECODE_STEPS = 32768, 256


@pytest.mark.parametrize("settings", [
    {}, {"fused_mixer": False}, {"fold_qk_activation": False}, {"norm_backend": "torch"},
    {"num_key_value_heads": 2}, {"num_key_value_heads": 2, "fused_mixer": False},
])
def test_triton_backend_matches_torch_backend(settings):
    """Forward + backward of tnl_385m (B=2, T=2048, and one packed row) with the Triton backend vs the PyTorch
    backend: fp32 closely, bf16 autocast at most 1.5x the PyTorch backend's own error; under each model setting
    (grouped k/v heads through the fused mixer and through the separate ops too)."""
    cfg = load_config(CONFIG, **settings)
    assert check_backends(cfg, "cuda", torch.bfloat16, ("triton", "torch"), batch=2, seq=2048)


def test_compiled_training_matches_eager():
    """torch.compile as training uses it (two layers, LRPE on the first) vs eager on the same weights."""
    assert check_compile(load_config(CONFIG, decoder_layers=2), "cuda", torch.bfloat16, batch=2, seq=2048)


def test_decode_memory_is_flat():
    """256 greedy decode steps after a 32k-token prompt: the cache and allocated memory stay flat."""
    assert check_flat_memory(load_config(CONFIG), "cuda", torch.bfloat16, prompt=CONTEXT, steps=DECODE_STEPS)


def test_decode_is_five_times_llama():
    """Decode tokens/s at 32k context, TNL (eager or one CUDA graph per step) vs a same-size HF Llama."""
    ratios = check_speed(load_config(CONFIG), "cuda", torch.bfloat16, CONTEXT, min(DECODE_STEPS, 128), [1, 8, 16])
    assert all(r >= 5 for r in ratios.values()), ratios
