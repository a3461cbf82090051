"""The gated SRMSNorm and the channel mixer's SGLU against their formulas written out (float64), and the custom
autograd forms that recompute their outputs in backward against plain PyTorch."""

from __future__ import annotations

import pytest
import torch


def _plain_gated_norm(o: torch.Tensor, u: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return u * (o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps))  # TNL paper eq. 7/9, written out


def test_gated_srms_norm_equals_formula_with_gradients_float64():
    from tnl.model.layers import gated_srms_norm

    g = torch.Generator().manual_seed(0)
    o = (torch.randn(3, 7, 24, generator=g, dtype=torch.float64) * 3).requires_grad_()
    u = torch.randn(3, 7, 24, generator=g, dtype=torch.float64).requires_grad_()
    dy = torch.randn(3, 7, 24, generator=g, dtype=torch.float64)
    y = gated_srms_norm(o, u)
    ref = _plain_gated_norm(o, u)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(y, (o, u), dy)
    want = torch.autograd.grad(ref, (o, u), dy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: gated_srms_norm(a, b), (o[:1, :2], u[:1, :2]))


def test_gated_srms_norm_inference_and_training_paths_round_once_alike():
    """bf16: the no-grad path (eval, generation) and the training Function both form u * norm(o) in fp32 and round
    once, so each is within half a bf16 step of the float64 value and they agree with each other."""
    from tnl.model.layers import gated_srms_norm

    g = torch.Generator().manual_seed(1)
    o = (torch.randn(4, 33, 256, generator=g) * 3).bfloat16()
    u = torch.randn(4, 33, 256, generator=g).bfloat16()
    with torch.no_grad():
        inf = gated_srms_norm(o, u)
    train = gated_srms_norm(o.clone().requires_grad_(), u.clone().requires_grad_()).detach()
    ref = _plain_gated_norm(o.double(), u.double())
    half_ulp = ref.abs() * 2.0**-8 + 1e-30
    for y in (inf, train):
        assert y.dtype == torch.bfloat16
        assert ((y.double() - ref).abs() <= half_ulp * 1.001).all()
    assert (inf != train).float().mean() < 1e-3


def test_srms_norm_under_autocast_saves_low_precision_output_and_matches_fp32_gradients():
    from tnl.model.layers import srms_norm
    from tnl.model.memory_saving import SRMSNormToLowPrecision

    g = torch.Generator().manual_seed(1)
    x64 = (torch.randn(4, 9, 32, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    dy = torch.randn(4, 9, 32, generator=g, dtype=torch.float64)
    # the backward formula from (y, r) alone, checked exactly in float64
    y = SRMSNormToLowPrecision.apply(x64, 1e-6, torch.float64)
    ref = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(y, x64, dy)[0],
                               torch.autograd.grad(ref, x64, dy, retain_graph=True)[0], rtol=1e-10, atol=1e-12)
    # training under bf16 autocast: bf16 output, saved instead of the fp32 input; gradient within bf16 rounding
    x = x64.detach().float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = srms_norm(x)
    assert yb.dtype == torch.bfloat16
    assert not any(t.dtype == torch.float32 and t.shape == x.shape for t in saved)
    dx = torch.autograd.grad(yb, x, dy.to(torch.bfloat16))[0]
    want = torch.autograd.grad(ref, x64, dy.to(torch.bfloat16).double())[0]
    assert ((dx.double() - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.parametrize("bias", [False, True])
def test_gated_norm_output_recomputed_in_backward_equals_plain_linear(bias):
    """out_proj(u * SRMSNorm(o)) with the gated output formed again in backward: the float64 formula's values and
    gradients, and under bf16 autocast nn.Linear's, without keeping the gated output for backward."""
    from tnl.model.layers import gated_srms_norm
    from tnl.model.memory_saving import GatedNormLinear

    torch.manual_seed(3)
    lin = torch.nn.Linear(24, 12, bias=bias).double()
    o = torch.randn(2, 7, 24, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 7, 24, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 7, 12, dtype=torch.float64)
    y = GatedNormLinear.apply(o, u, 1e-6, lin.weight, lin.bias)
    ref = lin(u * o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6))  # paper eq. 7, then the projection
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    params = [o, u, *lin.parameters()]
    for a, b in zip(torch.autograd.grad(y, params, dy), torch.autograd.grad(ref, params, dy)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    lin = lin.float()
    ob, ub = (x.detach().to(torch.bfloat16).requires_grad_() for x in (o, u))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = GatedNormLinear.apply(ob, ub, 1e-6, lin.weight, lin.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = lin(gated_srms_norm(ob, ub))
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    acts = {t.untyped_storage().data_ptr() for t in saved if t.shape == (2, 7, 24)}
    assert acts == {ob.untyped_storage().data_ptr(), ub.untyped_storage().data_ptr()}  # not the gated output
    params = [ob, ub, *lin.parameters()]
    for p_, q_ in zip(torch.autograd.grad(y, params, dy.to(torch.bfloat16)),
                      torch.autograd.grad(ref, params, dy.to(torch.bfloat16))):
        assert p_.dtype == q_.dtype
        torch.testing.assert_close(p_, q_, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("bias", [False, True])
def test_sglu_product_recomputed_in_backward_equals_plain_linear(bias):
    from tnl.model.layers import SGLU

    torch.manual_seed(2)
    m = SGLU(16, 40, bias=bias).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 16, dtype=torch.float64)
    y = m(x)
    ref = m.l3(m.l1(x) * m.l2(x))  # the formula: l3(l1(x) * l2(x))
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad(y, params, dy), torch.autograd.grad(ref, params, dy)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # bf16 autocast with fp32 weights, as in training: same values and gradients as nn.Linear under autocast,
    # and the product is not among the saved tensors
    m = m.float()
    xf = x.detach().float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xf)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = m.l1(xf), m.l2(xf)
        ref = m.l3(a * b)
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    acts = {t.untyped_storage().data_ptr() for t in saved if t.shape[:-1] == (2, 5) and t.shape[-1] == 40}
    assert len(acts) == 2  # a and b; not a * b
    params = [xf, *m.parameters()]
    for p_, q_ in zip(torch.autograd.grad(y, params, dy.to(torch.bfloat16)),
                      torch.autograd.grad(ref, params, dy.to(torch.bfloat16))):
        assert p_.dtype == q_.dtype
        torch.testing.assert_close(p_, q_, rtol=2e-2, atol=1e-3)
