"""The public `lightning_attn` never synchronises the device in a training step (fwd + bwd), dense and varlen
(cu_seqlens on the CPU), forward and reverse: `torch.cuda.set_sync_debug_mode("error")` turns any synchronising
CUDA call into an error. Run on a CUDA machine with `pytest -m gpu tests/ops/test_attn_sync_free_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from tnl.ops import lightning_attn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CASES = {  # name: (B, T, H, Hkv, D, cu_seqlens or None)
    "dense D=64": (2, 2048, 4, 4, 64, None),
    "dense D=128 grouped, segmented": (1, 16384, 8, 2, 128, None),
    "varlen D=64": (1, 5000, 4, 4, 64, [0, 100, 100, 1500, 1501, 5000]),
    "varlen D=128 long (segmented)": (1, 40000, 4, 4, 128, [0, 7, 30000, 40000]),
}


def _step(q, k, v, decay, s0, cu, reverse):
    o, final = lightning_attn(q, k, v, decay, scale=0.5, initial_state=s0, output_final_state=True, cu_seqlens=cu,
                              reverse=reverse)
    (o.float().square().sum() + final.square().sum()).backward()


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(CASES))
def test_public_fwd_bwd_never_synchronises(name, reverse):
    b, t, h, hkv, d, cu = CASES[name]
    dev = "cuda"
    torch.manual_seed(0)
    q = (0.3 * torch.randn(b, t, h, d, device=dev)).bfloat16().requires_grad_()
    k = (0.3 * torch.randn(b, t, hkv, d, device=dev)).bfloat16().requires_grad_()
    v = torch.randn(b, t, hkv, d, device=dev).bfloat16().requires_grad_()
    decay = torch.linspace(0.01, 1.0, h, device=dev)
    cu_t = torch.tensor(cu, dtype=torch.int32) if cu is not None else None  # on the CPU: planned on the host
    n = len(cu) - 1 if cu is not None else b
    s0 = torch.randn(n, h, d, d, device=dev, requires_grad=True)
    _step(q, k, v, decay, s0, cu_t, reverse)  # first call: compiles and tunes (those synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            _step(q, k, v, decay, s0, cu_t, reverse)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(q.grad).all() and torch.isfinite(s0.grad).all()


def test_device_value_checks_run_under_debug(monkeypatch):
    """decay >= 0 is checked for a CUDA decay only with TNL_DEBUG=1 (reading it back waits for the GPU); a CUDA
    cu_seqlens is read back for planning anyway, so its values are always checked."""
    q = torch.randn(1, 64, 2, 16, device="cuda")
    bad = torch.tensor([0.1, -0.1], device="cuda")
    lightning_attn(q, q, q, bad)  # not read back: no check, no error
    monkeypatch.setenv("TNL_DEBUG", "1")
    with pytest.raises(ValueError, match="decay rates must be >= 0"):
        lightning_attn(q, q, q, bad)
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0"):
        lightning_attn(q, q, q, bad.abs(), cu_seqlens=torch.tensor([0, 40, 30, 64], device="cuda"))
