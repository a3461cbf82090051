"""GPU acceptance checks of tnl's Triton lightning attention at real shapes, run on a CUDA machine with
`pytest -m gpu tests/ops/test_kernels_gpu.py` (`-s` shows each check's errors).

Forward, final state and gradients (q, k, v, initial_state) against the float64 blockwise reference: varlen,
grouped heads, odd T and D, D != E, non-contiguous and misaligned inputs, segmented long sequences (PREFIX, state
passes split into sub-segments), SiLU folded into q and k or passed in, the TMA configs of the shipped H100 table,
torch.compile, and the bf16 error at the model's head dims (fla's printed beside it when installed)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tnl.ops.lightning_attn import lightning_attn
from tnl.ops.lightning_attn.chunk import chunk_lightning_attn
from tnl.ops.lightning_attn.options import override_kernel_options

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
CU = [0, 100, 100, 1500, 1501, 4000]  # with an empty and a one-token sequence


def slopes(h: int) -> torch.Tensor:
    """TNL/ALiBi-style per-head decay rates."""
    return torch.tensor([2 ** (-8 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _triton(*args, **kwargs):
    from tnl.ops.lightning_attn.triton_entry import triton_lightning_attn

    return triton_lightning_attn(*args, **kwargs)


CASES = {  # name: (B, T, H, Hkv, D, E, dtype, options)
    "fp32 B2 T4096 H8 D=E=128 init scale": (2, 4096, 8, 8, 128, 128, F32, dict(scale=0.09)),
    "fp32 T1 B3": (3, 1, 4, 4, 64, 64, F32, {}),
    "fp32 odd T=1001 D=48 E=96 grouped 8/2": (2, 1001, 8, 2, 48, 96, F32, {}),
    "fp32 D=256 E=128 (LRPE)": (1, 1024, 4, 4, 256, 128, F32, {}),
    "bf16 D=256 E=128 (LRPE)": (2, 2048, 4, 4, 256, 128, BF16, {}),
    "bf16 D=256 E=128 B8 T2048 H16 (more than a wave: 4-warp configs)": (8, 2048, 16, 16, 256, 128, BF16, {}),
    "fp32 D=192 E=16": (1, 700, 2, 1, 192, 16, F32, {}),
    "fp32 non-contiguous q,k": (2, 513, 4, 4, 64, 64, F32, dict(noncontig=True)),
    "fp32 segmented T=20000 (auto segments)": (1, 20000, 2, 2, 64, 64, F32, {}),
    "fp32 B3 T3000 H16 D=E=64": (3, 3000, 16, 16, 64, 64, F32, {}),
    "bf16 B4 T8192 H16 D=E=64": (4, 8192, 16, 16, 64, 64, BF16, {}),
    "bf16 B4 T8192 H16 D=E=64 SiLU folded into q, k": (4, 8192, 16, 16, 64, 64, BF16, dict(silu=True)),
    "bf16 B2 T1024 H4 D=256 E=128 misaligned q, k, v addresses": (2, 1024, 4, 4, 256, 128, BF16,
                                                                   dict(misaligned=True)),
    "bf16 B8 T512 H4 D=128 E=64 (quickstart LRPE) SiLU folded": (8, 512, 4, 4, 128, 64, BF16, dict(silu=True)),
    "bf16 B16 T2048 H8 D=E=128 SiLU(q), SiLU(k) given (compiled model path), packed q, k, v": (
        16, 2048, 8, 8, 128, 128, BF16, dict(init=False, preact=True)),
    "fp32 B2 T3001 H4 grouped 4/2 D=64 E=32 SiLU(q), SiLU(k) given, segmented": (
        2, 3001, 4, 2, 64, 32, F32, dict(seg_len=512, preact=True)),
    "bf16 B2 T1024 H4 D=E=64 aligned": (2, 1024, 4, 4, 64, 64, BF16, {}),
    "bf16 B2 T1024 H4 D=E=64 misaligned q, k, v addresses": (2, 1024, 4, 4, 64, 64, BF16, dict(misaligned=True)),
    "fp32 segmented forced seg=512, odd T": (2, 3001, 4, 2, 64, 32, F32, dict(seg_len=512)),
    "bf16 B4 T16384 H16 D=E=64 two segments (PREFIX, auto)": (4, 16384, 16, 16, 64, 64, BF16, {}),
    "fp32 PREFIX forced seg=2048, odd T, grouped 4/2, D=64 E=32": (3, 3001, 4, 2, 64, 32, F32, dict(seg_len=2048)),
    "bf16 PREFIX seg=2048 SiLU folded": (2, 4096, 8, 8, 64, 64, BF16, dict(seg_len=2048, silu=True)),
    "bf16 PREFIX seg=1024 misaligned q, k, v addresses": (2, 2000, 4, 4, 64, 48, BF16,
                                                          dict(seg_len=1024, misaligned=True)),
    "fp32 varlen (empty + 1-token seqs)": (1, 4000, 4, 2, 64, 64, F32, dict(cu=CU)),
    "fp32 varlen segmented seg=512": (1, 4000, 4, 2, 64, 64, F32, dict(cu=CU, seg_len=512)),
    "bf16 B2 T2048 H8 grouped D=E=128": (2, 2048, 8, 4, 128, 128, BF16, {}),
    "fp16 B2 T1024 H4 D=64 E=128": (2, 1024, 4, 4, 64, 128, F16, {}),
    # one wave of long programs: the H100 table's TMA configs (D=128 every pass, D=256 forward and dv)
    "bf16 B4 T4097 H16 D=E=128 one wave (TMA), odd T": (4, 4097, 16, 16, 128, 128, BF16, {}),
    "bf16 B4 T4096 H16 grouped 16/4 D=E=128 one wave (TMA) SiLU folded": (4, 4096, 16, 4, 128, 128, BF16,
                                                                           dict(silu=True)),
    "bf16 B4 T4000 H16 D=256 E=128 one wave (TMA)": (4, 4000, 16, 16, 256, 128, BF16, {}),
    "bf16 B1 T20000 H16 D=256 E=128 segmented (TMA; state pass split in 4, partial last)": (
        1, 20000, 16, 16, 256, 128, BF16, {}),
    # one wave of segments whose state pass is cut into sub-segments (R=2 with odd T; R=4 at the benchmark's 64k)
    "fp32 B1 T30001 H16 D=E=128 init, state pass split in 2, odd T": (1, 30001, 16, 16, 128, 128, F32, {}),
    "bf16 B1 T65536 H16 D=E=128 state pass split in 4": (1, 65536, 16, 16, 128, 128, BF16, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64(name):
    b, t, h, hkv, d, e, dtype, opts = CASES[name]
    opts = dict(opts)
    seg_len = opts.pop("seg_len", None)
    with override_kernel_options(seg_len=seg_len) if seg_len else contextlib.nullcontext():
        errs, finite = _errors(b, t, h, hkv, d, e, dtype, **opts)
    tol = 2e-5 if dtype == F32 else 2e-2
    print(f"{name}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    assert finite, "non-finite outputs or gradients"
    assert all(v < tol for v in errs.values()), errs


# every path of the plan once, run with reverse=True (each sequence from its end)
REVERSE_CASES = [
    "fp32 odd T=1001 D=48 E=96 grouped 8/2",
    "fp32 segmented forced seg=512, odd T",
    "bf16 B4 T16384 H16 D=E=64 two segments (PREFIX, auto)",
    "fp32 varlen segmented seg=512",
    "bf16 B4 T4097 H16 D=E=128 one wave (TMA), odd T",
    "bf16 B4 T4096 H16 grouped 16/4 D=E=128 one wave (TMA) SiLU folded",
    "bf16 B1 T20000 H16 D=256 E=128 segmented (TMA; state pass split in 4, partial last)",
    "fp32 B1 T30001 H16 D=E=128 init, state pass split in 2, odd T",
    "bf16 B16 T2048 H8 D=E=128 SiLU(q), SiLU(k) given (compiled model path), packed q, k, v",
]


@pytest.mark.parametrize("name", REVERSE_CASES)
def test_reverse_matches_float64(name):
    """reverse=True against the float64 blockwise reference run on time-flipped copies."""
    b, t, h, hkv, d, e, dtype, opts = CASES[name]
    opts = dict(opts)
    seg_len = opts.pop("seg_len", None)
    with override_kernel_options(seg_len=seg_len) if seg_len else contextlib.nullcontext():
        errs, finite = _errors(b, t, h, hkv, d, e, dtype, reverse=True, **opts)
    tol = 2e-5 if dtype == F32 else 2e-2
    print(f"reverse {name}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    assert finite, "non-finite outputs or gradients"
    assert all(v < tol for v in errs.values()), errs


def _errors(b, t, h, hkv, d, e, dtype, init=True, cu=None, scale=1.0, noncontig=False, silu=False,
            misaligned=False, preact=False, reverse=False) -> tuple[dict[str, float], bool]:
    # preact: q, k, v are views of one packed projection (as the model's qkvu) and SiLU(q), SiLU(k) are passed
    # beside them (qk_activated, the compiled model's path): backward applies SiLU' as it writes dq, dk
    dev = "cuda"
    torch.manual_seed(0)
    n = len(cu) - 1 if cu is not None else b
    q = torch.randn(b, t, h, d, device=dev).to(dtype)
    k = torch.randn(b, t, hkv, d, device=dev).to(dtype)
    v = torch.randn(b, t, hkv, e, device=dev).to(dtype)
    if misaligned:  # addresses off 16 bytes (Triton compiles another specialization, without wide loads)
        q, k, v = (torch.randn(x.numel() + 1, device=dev).to(dtype)[1:].view(x.shape) for x in (q, k, v))
    if noncontig:
        q = torch.randn(b, h, t, d, device=dev).to(dtype).transpose(1, 2)
        k = torch.randn(b, t, hkv, 2 * d, device=dev).to(dtype)[..., ::2]
    decay = slopes(h).to(dev)
    s0 = torch.randn(n, h, d, e, device=dev) if init else None
    cut = torch.tensor(cu, dtype=torch.int32, device=dev) if cu is not None else None
    activated = None
    if preact:
        widths = (h * d, hkv * d, hkv * e)
        packed = torch.cat([x.reshape(b, t, -1) for x in (q, k, v)], -1).requires_grad_()
        q, k, v = (x.view(b, t, -1, dd) for x, dd in zip(packed.split(widths, -1), (d, d, e)))
        activated = (torch.nn.functional.silu(q), torch.nn.functional.silu(k))
        leaves = [x for x in (packed, s0) if x is not None]
        if s0 is not None:
            s0.requires_grad_()
    else:
        leaves = [x.requires_grad_() for x in (q, k, v, s0) if x is not None]
    poison = torch.full((2**28,), float("nan"), device=dev)  # freed blocks hold NaN: unwritten outputs show
    del poison
    o, final = _triton(q, k, v, decay, scale=scale, initial_state=s0, output_final_state=True, cu_seqlens=cut,
                       qk_activation="silu" if silu or preact else None, qk_activated=activated, reverse=reverse)
    go = torch.randn(o.shape, device=dev, dtype=torch.float64)
    gf = torch.randn(final.shape, device=dev, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    if preact:  # back to separate q, k, v gradients and leaves for the reference
        grads = [g.view(b, t, -1, dd) for g, dd in zip(grads[0].split(widths, -1), (d, d, e))] + list(grads[1:])
        leaves = [q, k, v] + leaves[1:]
        silu = True
    ref = [x.detach().double().requires_grad_() for x in leaves]
    qr, kr = (torch.nn.functional.silu(x) for x in ref[:2]) if silu else ref[:2]
    o_r, f_r = lightning_attn(qr, kr, ref[2], decay.double(), scale=scale, initial_state=ref[3] if init else None,
                              output_final_state=True, cu_seqlens=cut, backend="torch", reverse=reverse)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref)
    errs = {"o": rel(o, o_r), "final": rel(final, f_r)}
    for nm, g, gr in zip(["dq", "dk", "dv", "ds0"], grads, grads_r):
        errs[nm] = rel(g, gr)
    return errs, all(torch.isfinite(x).all().item() for x in (o, final, *grads))


def test_torch_compile_fullgraph_matches_eager():
    dev = "cuda"
    q, k, v = (torch.randn(2, 256, 4, 64, device=dev, dtype=BF16, requires_grad=True) for _ in range(3))
    decay = slopes(4).to(dev)

    def f(q, k, v):
        o, _ = _triton(q, k, v, decay, scale=0.125)
        return o.float().square().mean()

    torch.compile(f, fullgraph=True)(q, k, v).backward()
    g1 = q.grad.clone()
    q.grad = None
    f(q, k, v).backward()
    assert rel(g1, q.grad) < 1e-3


@pytest.mark.parametrize("d,e", [(128, 128), (64, 64), (256, 128)])
def test_bf16_error_at_model_head_dims(d, e):
    """bf16 error against float64 on the same bf16-rounded inputs (B=2, T=4096, H=8, decay = TNL slopes); fla's,
    when installed, is printed beside it."""
    dev = "cuda"
    b, t, h = 2, 4096, 8
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, t, h, x, device=dev).to(BF16) for x in (d, d, e))
    decay = slopes(h).to(dev)
    scale = d ** -0.5
    go = torch.randn(b, t, h, e, device=dev).to(BF16)
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    o_r, _ = chunk_lightning_attn(*ref_leaves, decay.double(), scale)
    g_r = torch.autograd.grad(o_r, ref_leaves, go.double())
    impls = {"tnl": lambda q_, k_, v_: _triton(q_, k_, v_, decay, scale=scale)[0]}
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        impls["fla"] = lambda q_, k_, v_: chunk_simple_gla(q_, k_, v_, g_gamma=-decay, scale=scale)[0]
    except ImportError:
        pass
    errs = {}
    for name, fn in impls.items():
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        o = fn(*leaves)
        g = torch.autograd.grad(o, leaves, go)
        errs[name] = [rel(o, o_r)] + [rel(a, b_) for a, b_ in zip(g, g_r)]
        print(f"D,E={d},{e} {name}: o dq dk dv " + " ".join(f"{x:.1e}" for x in errs[name]))
    assert max(errs["tnl"]) < 2e-2, errs
