"""The cross-entropy row kernel under TRITON_INTERPRET=1 (CPU), against float64 log-softmax."""

import pytest
import torch

from tests.helpers.interpret import IN_CHILD, run_interpreted

pytest.importorskip("triton")

if not IN_CHILD:  # the kernel tests run in a child process under the interpreter (tests/interpret.py)

    def test_cross_entropy_kernel_interpreted():
        run_interpreted(__file__)

else:
    from tnl.ops.cross_entropy import fused, fused_linear_cross_entropy

    @pytest.mark.parametrize("v", [7, 4096, 5001])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_rows_kernel(v, dtype):
        assert fused._use_triton(torch.empty(1))
        torch.manual_seed(v)
        x = (torch.randn(6, v) * 4).to(dtype)
        t = torch.randint(0, v, (6,))
        t[2] = -100
        loss = torch.empty(6)
        g = x.clone()
        fused._rows(g, t, loss, -100, True)
        xd = x.double()
        logp = xd - xd.logsumexp(-1, keepdim=True)
        keep = t != -100
        ref_loss = torch.zeros(6, dtype=torch.float64)
        ref_loss[keep] = -logp[keep].gather(1, t[keep][:, None]).squeeze(1)
        ref_g = logp.exp()
        ref_g[keep, t[keep]] -= 1
        ref_g[~keep] = 0
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
        tol = 1e-6 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(g.double(), ref_g, rtol=tol, atol=tol)

    def test_rows_kernel_out_of_range_target_is_nan_not_a_bad_read():
        x = torch.randn(3, 50)
        t = torch.tensor([3, 50, -7])
        loss, g = torch.empty(3), x.clone()
        fused._rows(g, t, loss, -100, True)
        assert loss[0].isfinite() and loss[1:].isnan().all()
        assert (g[1:] == 0).all() and g[0].sum().abs() < 1e-5

    def test_fused_loss_through_kernel():
        torch.manual_seed(1)
        h = torch.randn(2, 9, 8, requires_grad=True)
        w = torch.randn(300, 8, requires_grad=True)
        t = torch.randint(0, 300, (2, 9))
        t[1, 4] = -100
        got = fused_linear_cross_entropy(h, w, t, chunk_size=5)
        gh, gw = torch.autograd.grad(got, (h, w))
        hd, wd = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        ref = torch.nn.functional.cross_entropy((hd @ wd.t()).reshape(-1, 300), t.reshape(-1))
        rh, rw = torch.autograd.grad(ref, (hd, wd))
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gh.double(), rh, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gw.double(), rw, rtol=1e-4, atol=1e-5)
