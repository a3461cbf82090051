"""Fused linear cross-entropy (torch row path) against torch's cross-entropy on full logits."""

import pytest
import torch
import torch.nn.functional as F

from tnl.ops.cross_entropy import fused_linear_cross_entropy


def _inputs(n=(3, 11), d=16, v=53, dtype=torch.float64, ignored=4):
    torch.manual_seed(0)
    h = torch.randn(*n, d, dtype=dtype, requires_grad=True)
    w = torch.randn(v, d, dtype=dtype, requires_grad=True)
    t = torch.randint(0, v, n)
    t.view(-1)[:ignored] = -100
    return h, w, t


def _reference(h, w, t, reduction="mean"):
    # independent formula: log-softmax written out in float64
    logits = (h.double().reshape(-1, h.shape[-1]) @ w.double().t())
    logp = logits - logits.logsumexp(-1, keepdim=True)
    tt = t.reshape(-1)
    keep = tt != -100
    nll = -logp[keep].gather(1, tt[keep][:, None]).squeeze(1)
    return nll.sum() if reduction == "sum" else nll.mean()


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_and_grads_match_float64_formula(chunk, reduction):
    h, w, t = _inputs()
    got = fused_linear_cross_entropy(h, w, t, chunk_size=chunk, reduction=reduction)
    ref = _reference(h, w, t, reduction)
    g_out = torch.tensor(1.7, dtype=torch.float64)  # a non-unit upstream gradient (loss scaling)
    grads = torch.autograd.grad(got, (h, w), g_out)
    ref_grads = torch.autograd.grad(ref, (h, w), g_out)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert grads[0].reshape(-1, 16)[:4].abs().max() == 0  # ignored targets get no gradient


def test_autocast_matches_linear_then_fp32_cross_entropy():
    """Under bf16 autocast the logits are bf16 (as nn.Linear gives them) and the softmax fp32; weights stay fp32."""
    h, w, t = _inputs(n=(2, 40), d=32, v=301, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_linear_cross_entropy(h, w, t, chunk_size=16)
        ref = F.cross_entropy(F.linear(h, w).float().reshape(-1, 301), t.reshape(-1))
    gh, gw = torch.autograd.grad(got, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert gw.dtype == torch.float32 and gh.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the bf16 gradient products round differently from autograd's; both are bf16 GEMMs of the same operands
    for a, b in zip((gh, gw), (rh, rw)):
        assert ((a - b).norm() / b.norm()).item() < 1e-2


def test_no_grad_gives_the_loss_only():
    h, w, t = _inputs()
    with torch.no_grad():
        got = fused_linear_cross_entropy(h, w, t, chunk_size=5)
    torch.testing.assert_close(got, _reference(h, w, t), rtol=1e-12, atol=1e-12)
    assert not got.requires_grad


@pytest.mark.parametrize("bad, match", [
    (lambda h, w, t: (h, w[:, :5], t), "needs weight"),
    (lambda h, w, t: (h, w, t[:, :3]), "targets shape"),
    (lambda h, w, t: (h, w, t.masked_fill(t == t[1, 0], 53)), "outside the vocabulary"),
])
def test_bad_input_is_one_line_error(bad, match):
    h, w, t = _inputs()
    with pytest.raises(ValueError, match=match) as err:
        fused_linear_cross_entropy(*bad(h, w, t))
    assert "\n" not in str(err.value)


def test_torch_rows_out_of_range_target_is_nan():
    """The row routine as used on a GPU (where no host check runs): NaN loss and no gradient for a bad target."""
    from tnl.ops.cross_entropy.fused import _rows

    x = torch.randn(3, 50, dtype=torch.float64)
    t = torch.tensor([3, 50, -100])
    loss, g = torch.empty(3, dtype=torch.float64), x.clone()
    _rows(g, t, loss, -100, True)
    assert loss[0].isfinite() and loss[1].isnan() and loss[2] == 0
    assert (g[1:] == 0).all() and g[0].sum().abs() < 1e-12
