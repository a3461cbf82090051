"""SimpleRMSNorm row kernels under TRITON_INTERPRET=1 (CPU), against float64 formulas and autograd."""

import pytest
import torch

from tests.helpers.interpret import IN_CHILD, run_interpreted

pytest.importorskip("triton")

if not IN_CHILD:  # the kernel tests run in a child process under the interpreter (tests/interpret.py)

    def test_srms_norm_kernels_interpreted():
        run_interpreted(__file__)

else:
    from tnl.ops.srms_norm import fused as N

    def _ref_norm(x):
        x = x.double().requires_grad_()
        return x, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    @pytest.mark.parametrize("d", [24, 1000])
    @pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
    def test_norm_forward_backward(d, out_dtype):
        torch.manual_seed(d)
        x = torch.randn(3, 5, d) * 3
        assert N._use_triton(x, "auto") and N._use_triton(x, "triton") and not N._use_triton(x, "torch")
        y, r = N.norm_forward(x, 1e-6, out_dtype)
        xd, yd = _ref_norm(x)
        tol = 1e-6 if out_dtype == torch.float32 else 8e-3
        assert y.dtype == out_dtype and r.shape == (3, 5, 1)
        torch.testing.assert_close(y.double(), yd, rtol=tol, atol=tol)
        dy = torch.randn(3, 5, d).to(out_dtype)
        dx = N.norm_backward(dy, y, r, torch.float32)
        (ref,) = torch.autograd.grad(yd, xd, dy.double())
        # the backward reads y as stored (rounded to out_dtype), as the model's Function does
        torch.testing.assert_close(dx.double(), ref, rtol=10 * tol, atol=10 * tol)

    @pytest.mark.parametrize("into", [False, True])
    @pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_gated_forward_backward_with_strided_gate(dtype, backend, into):
        torch.manual_seed(0)
        o = (torch.randn(2, 7, 96) * 2).to(dtype)
        u = torch.randn(2, 7, 4 * 96)[..., 96:192].to(dtype)  # a view of a wider projection, like the model's u
        y, r = N.gated_norm_forward(o, u, 1e-6)
        od, ud = o.double().requires_grad_(), u.double().requires_grad_()
        yd = ud * od / torch.sqrt(od.pow(2).mean(-1, keepdim=True) + 1e-6)
        tol = 1e-6 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(y.double(), yd, rtol=tol, atol=tol)
        dy = torch.randn(2, 7, 96).to(dtype)
        packed = torch.full((2, 7, 4 * 96), float("nan"), dtype=dtype)  # du_out: u's slice of a packed gradient
        do, du = N.gated_norm_backward(dy, o, u, r, du_out=packed[..., 192:288] if into else None, backend=backend)
        ref_o, ref_u = torch.autograd.grad(yd, (od, ud), dy.double())
        assert do.dtype == dtype and du.dtype == dtype
        if into:
            assert du.data_ptr() == packed[..., 192:288].data_ptr()
            assert packed[..., :192].isnan().all() and packed[..., 288:].isnan().all()  # nothing else written
        torch.testing.assert_close(do.double(), ref_o, rtol=tol, atol=tol)
        torch.testing.assert_close(du.double(), ref_u, rtol=tol, atol=tol)

    def test_gated_backward_rejects_a_wrong_du_out():
        o, u, dy = torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32)
        _, r = N.gated_norm_forward(o, u, 1e-6)
        with pytest.raises(ValueError, match="du_out must be"):
            N.gated_norm_backward(dy, o, u, r, du_out=torch.empty(2, 5, 32, dtype=torch.bfloat16))

    @pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
    def test_every_backend_matches_float64(backend):
        """The caller's backend choice reaches every function; the kernels and the formulas agree with float64."""
        torch.manual_seed(2)
        x, u = torch.randn(3, 4, 40) * 2, torch.randn(3, 4, 40)
        y, r = N.norm_forward(x, 1e-6, torch.float32, backend=backend)
        xd, yd = _ref_norm(x)
        torch.testing.assert_close(y.double(), yd, rtol=1e-6, atol=1e-6)
        dy = torch.randn(3, 4, 40)
        (ref,) = torch.autograd.grad(yd, xd, dy.double())
        torch.testing.assert_close(N.norm_backward(dy, y, r, torch.float32, backend=backend).double(), ref,
                                   rtol=1e-5, atol=1e-5)
        g, r = N.gated_norm_forward(x, u, 1e-6, backend=backend)
        torch.testing.assert_close(g.double(), u.double() * yd, rtol=1e-6, atol=1e-6)

    def test_backend_choice_is_checked(monkeypatch):
        x = torch.randn(2, 8)
        with pytest.raises(ValueError, match="srms_norm: backend must be one of auto, triton, torch, got 'cuda'"):
            N.norm_forward(x, 1e-6, torch.float32, backend="cuda")
        monkeypatch.delenv("TRITON_INTERPRET")  # a CPU tensor without the interpreter: no Triton
        with pytest.raises(ValueError, match="backend='triton' needs Triton and a CUDA tensor"):
            N.norm_forward(x, 1e-6, torch.float32, backend="triton")
        y, _ = N.norm_forward(x, 1e-6, torch.float32)  # auto: the formulas
        torch.testing.assert_close(y.double(), _ref_norm(x)[1], rtol=1e-6, atol=1e-6)
