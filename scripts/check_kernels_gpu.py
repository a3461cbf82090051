"""Check tnl's Triton lightning attention on a GPU at real shapes.

Compares forward, final state and gradients (q, k, v, initial_state) with the float64 blockwise reference,
covers varlen, grouped heads, odd T and D, D != E, non-contiguous inputs, segmented long sequences, SiLU folded
into q and k, decode and torch.compile, and reports the bf16 error against an fp32/fp64 reference (and fla's,
when installed).

    python scripts/check_kernels_gpu.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tnl.ops.lightning_attn.chunk import chunk_lightning_attn  # noqa: E402
from tnl.ops.lightning_attn.chunk_triton import triton_lightning_attn, triton_lightning_attn_decode  # noqa: E402
from tnl.ops.lightning_attn.interface import _per_sequence  # noqa: E402
from tnl.ops.lightning_attn.recurrent import recurrent_lightning_attn_step  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def slopes(h: int) -> torch.Tensor:
    """TNL/ALiBi-style per-head decay rates."""
    return torch.tensor([2 ** (-8 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def reference(q, k, v, decay, scale, s0, cu):
    fn = chunk_lightning_attn
    args = (q.double(), k.double(), v.double(), decay.double(), scale, s0.double() if s0 is not None else None, True)
    if cu is not None:
        return _per_sequence(fn, *args[:6], True, cu)
    return fn(*args)


def record(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


ONLY: str | None = None


def check_case(name, *args, **kwargs):
    if ONLY is not None and ONLY not in name:
        return
    try:
        _check_case(name, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        record(name, False, f"{type(exc).__name__}: {str(exc)[:200]}")
    os.environ.pop("TNL_ATTN_SEG_LEN", None)


def _check_case(name, b, t, h, hkv, d, e, dtype=torch.float32, init=True, cu=None, scale=1.0, tol=None,
                noncontig=False, seg_len=None, silu=False, misaligned=False, preact=False):
    # preact: q, k, v are views of one packed projection (as the model's qkvu) and SiLU(q), SiLU(k) are passed
    # beside them (qk_activated, the compiled model's path): backward applies SiLU' as it writes dq, dk
    dev = "cuda"
    if seg_len:
        os.environ["TNL_ATTN_SEG_LEN"] = str(seg_len)
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
    o, final = triton_lightning_attn(q, k, v, decay, scale=scale, initial_state=s0, output_final_state=True,
                                     cu_seqlens=cut, qk_activation="silu" if silu or preact else None,
                                     qk_activated=activated)
    go = torch.randn(o.shape, device=dev, dtype=torch.float64)
    gf = torch.randn(final.shape, device=dev, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    if preact:  # back to separate q, k, v gradients and leaves for the reference
        grads = [g.view(b, t, -1, dd) for g, dd in zip(grads[0].split(widths, -1), (d, d, e))] + list(grads[1:])
        leaves = [q, k, v] + leaves[1:]
        silu = True
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    qr, kr = (torch.nn.functional.silu(x) for x in ref_leaves[:2]) if silu else ref_leaves[:2]
    o_r, f_r = reference(qr, kr, ref_leaves[2], decay, scale, ref_leaves[3] if init else None, cut)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref_leaves)
    tol = tol or (2e-5 if dtype == torch.float32 else 2e-2)
    errs = {"o": rel(o, o_r), "final": rel(final, f_r)}
    for nm, g, gr in zip(["dq", "dk", "dv", "ds0"], grads, grads_r):
        errs[nm] = rel(g, gr)
    finite = all(torch.isfinite(x).all().item() for x in (o, final, *grads))
    ok = finite and all(v_ < tol for v_ in errs.values())
    record(name, ok, " ".join(f"{kk}={vv:.1e}" for kk, vv in errs.items()) + ("" if finite else " NON-FINITE"))
    os.environ.pop("TNL_ATTN_SEG_LEN", None)


def check_decode():
    dev = "cuda"
    b, h, hkv, d, e = 4, 8, 2, 128, 64
    decay = slopes(h).to(dev)
    state = torch.randn(b, h, d, e, device=dev)
    ref_state = state.clone()
    worst = 0.0
    for _ in range(5):
        q, k, v = (torch.randn(b, hh, dd, device=dev, dtype=torch.bfloat16) for hh, dd in ((h, d), (hkv, d), (hkv, e)))
        o = triton_lightning_attn_decode(q, k, v, decay, state, scale=0.5)
        o_r, ref_state = recurrent_lightning_attn_step(q, k, v, decay, ref_state, scale=0.5)
        worst = max(worst, rel(o.float(), o_r.float()))
    ok = worst < 1e-2 and rel(state, ref_state) < 1e-5
    record("decode bf16 (5 steps, in-place state)", ok, f"o={worst:.1e} state={rel(state, ref_state):.1e}")


def check_compile():
    dev = "cuda"
    from tnl.ops import lightning_attn

    q = torch.randn(2, 256, 4, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 256, 4, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(2, 256, 4, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    decay = slopes(4).to(dev)

    def f(q, k, v):
        o, _ = triton_lightning_attn(q, k, v, decay, scale=0.125)
        return o.float().square().mean()

    try:
        cf = torch.compile(f, fullgraph=True)
        loss = cf(q, k, v)
        loss.backward()
        g1 = q.grad.clone()
        q.grad = None
        f(q, k, v).backward()
        ok = rel(g1, q.grad) < 1e-3
        record("torch.compile fullgraph fwd+bwd", ok, f"dq diff {rel(g1, q.grad):.1e}")
    except Exception as exc:  # noqa: BLE001
        record("torch.compile fullgraph fwd+bwd", False, f"{type(exc).__name__}: {str(exc)[:200]}")
    _ = lightning_attn


def bf16_error_table():
    """bf16 error of tnl (and fla) against the float64 result on the same bf16-rounded inputs."""
    dev = "cuda"
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # noqa: BLE001
        chunk_simple_gla = None
    print("\nbf16 relative error vs float64 on the same bf16 inputs (B=2, T=4096, H=8, decay = TNL slopes)")
    print(f"{'D,E':>8} {'impl':>5} {'o':>8} {'dq':>8} {'dk':>8} {'dv':>8}")
    for d, e in ((128, 128), (64, 64), (256, 128)):
        b, t, h = 2, 4096, 8
        q, k, v = (torch.randn(b, t, h, x, device=dev).to(torch.bfloat16) for x in (d, d, e))
        decay = slopes(h).to(dev)
        scale = d ** -0.5
        go = torch.randn(b, t, h, e, device=dev).to(torch.bfloat16)
        ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
        o_r, _ = chunk_lightning_attn(*ref_leaves, decay.double(), scale)
        g_r = torch.autograd.grad(o_r, ref_leaves, go.double())
        impls = [("tnl", lambda q_, k_, v_, s_=decay, c_=scale: triton_lightning_attn(q_, k_, v_, s_, scale=c_)[0])]
        if chunk_simple_gla is not None:
            impls.append(("fla", lambda q_, k_, v_, s_=decay, c_=scale: chunk_simple_gla(q_, k_, v_, g_gamma=-s_,
                                                                                         scale=c_)[0]))
        for name, fn in impls:
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            o = fn(*leaves)
            g = torch.autograd.grad(o, leaves, go)
            errs = [rel(o, o_r)] + [rel(a, b_) for a, b_ in zip(g, g_r)]
            print(f"{f'{d},{e}':>8} {name:>5} " + " ".join(f"{x:8.1e}" for x in errs))
            if name == "tnl":
                record(f"bf16 error D={d} E={e}", max(errs) < 2e-2, " ".join(f"{x:.1e}" for x in errs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", type=int, default=0, help="skip the first N shape cases (already checked)")
    ap.add_argument("--only", help="only the shape cases whose name contains this text (no decode/compile/table)")
    ap.add_argument("--error-table-only", action="store_true", help="only the bf16 error table (tnl and fla)")
    ap.add_argument("--bwd", choices=["split", "fused"], default="split",
                    help="backward form for dK/dV (TNL_ATTN_BWD): three split passes or the fused dK/dV pass")
    args = ap.parse_args()
    os.environ["TNL_ATTN_BWD"] = args.bwd
    global ONLY
    ONLY = args.only
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    torch.manual_seed(0)
    t0 = time.time()
    f32 = torch.float32
    bf = torch.bfloat16
    cu = [0, 100, 100, 1500, 1501, 4000]
    cases = [
        lambda: check_case("fp32 B2 T4096 H8 D=E=128 init scale", 2, 4096, 8, 8, 128, 128, f32, scale=0.09),
        lambda: check_case("fp32 T1 B3", 3, 1, 4, 4, 64, 64, f32),
        lambda: check_case("fp32 odd T=1001 D=48 E=96 grouped 8/2", 2, 1001, 8, 2, 48, 96, f32),
        lambda: check_case("fp32 D=256 E=128 (LRPE)", 1, 1024, 4, 4, 256, 128, f32),
        lambda: check_case("bf16 D=256 E=128 (LRPE)", 2, 2048, 4, 4, 256, 128, bf),
        lambda: check_case("bf16 D=256 E=128 B8 T2048 H16 (more than a wave: 4-warp configs)", 8, 2048, 16, 16, 256,
                           128, bf),
        lambda: check_case("fp32 D=192 E=16", 1, 700, 2, 1, 192, 16, f32),
        lambda: check_case("fp32 non-contiguous q,k", 2, 513, 4, 4, 64, 64, f32, noncontig=True),
        lambda: check_case("fp32 segmented T=20000 (auto segments)", 1, 20000, 2, 2, 64, 64, f32),
        lambda: check_case("fp32 B3 T3000 H16 D=E=64", 3, 3000, 16, 16, 64, 64, f32),
        lambda: check_case("bf16 B4 T8192 H16 D=E=64", 4, 8192, 16, 16, 64, 64, bf),
        lambda: check_case("bf16 B4 T8192 H16 D=E=64 SiLU folded into q, k", 4, 8192, 16, 16, 64, 64, bf, silu=True),
        lambda: check_case("bf16 B2 T1024 H4 D=256 E=128 misaligned q, k, v addresses", 2, 1024, 4, 4, 256, 128, bf,
                           misaligned=True),
        lambda: check_case("bf16 B8 T512 H4 D=128 E=64 (quickstart LRPE) SiLU folded", 8, 512, 4, 4, 128, 64, bf,
                           silu=True),
        lambda: check_case("bf16 B16 T2048 H8 D=E=128 SiLU(q), SiLU(k) given (compiled model path), packed q, k, v",
                           16, 2048, 8, 8, 128, 128, bf, init=False, preact=True),
        lambda: check_case("fp32 B2 T3001 H4 grouped 4/2 D=64 E=32 SiLU(q), SiLU(k) given, segmented", 2, 3001, 4, 2,
                           64, 32, f32, seg_len=512, preact=True),
        lambda: check_case("bf16 B2 T1024 H4 D=E=64 aligned", 2, 1024, 4, 4, 64, 64, bf),
        lambda: check_case("bf16 B2 T1024 H4 D=E=64 misaligned q, k, v addresses", 2,
                           1024, 4, 4, 64, 64, bf, misaligned=True),
        lambda: check_case("fp32 segmented forced seg=512, odd T", 2, 3001, 4, 2, 64, 32, f32, seg_len=512),
        lambda: check_case("bf16 B4 T16384 H16 D=E=64 two segments (PREFIX, auto)", 4, 16384, 16, 16, 64, 64, bf),
        lambda: check_case("fp32 PREFIX forced seg=2048, odd T, grouped 4/2, D=64 E=32", 3, 3001, 4, 2, 64, 32, f32,
                           seg_len=2048),
        lambda: check_case("bf16 PREFIX seg=2048 SiLU folded", 2, 4096, 8, 8, 64, 64, bf, seg_len=2048, silu=True),
        lambda: check_case("bf16 PREFIX seg=1024 misaligned q, k, v addresses", 2, 2000, 4, 4, 64, 48, bf,
                           seg_len=1024, misaligned=True),
        lambda: check_case("fp32 varlen (empty + 1-token seqs)", 1, 4000, 4, 2, 64, 64, f32, cu=cu),
        lambda: check_case("fp32 varlen segmented seg=512", 1, 4000, 4, 2, 64, 64, f32, cu=cu, seg_len=512),
        lambda: check_case("bf16 B2 T2048 H8 grouped D=E=128", 2, 2048, 8, 4, 128, 128, bf),
        lambda: check_case("fp16 B2 T1024 H4 D=64 E=128", 2, 1024, 4, 4, 64, 128, torch.float16),
        # one wave of long programs: the H100 table's TMA configs (D=128 every pass, D=256 forward and dv)
        lambda: check_case("bf16 B4 T4097 H16 D=E=128 one wave (TMA), odd T", 4, 4097, 16, 16, 128, 128, bf),
        lambda: check_case("bf16 B4 T4096 H16 grouped 16/4 D=E=128 one wave (TMA) SiLU folded", 4, 4096, 16, 4, 128,
                           128, bf, silu=True),
        lambda: check_case("bf16 B4 T4000 H16 D=256 E=128 one wave (TMA)", 4, 4000, 16, 16, 256, 128, bf),
        lambda: check_case("bf16 B1 T20000 H16 D=256 E=128 segmented (TMA; state pass split in 4, partial last)", 1,
                           20000, 16, 16, 256, 128, bf),
        # one wave of segments whose state pass is cut into sub-segments (R=2 with odd T; R=4 at the benchmark's 64k)
        lambda: check_case("fp32 B1 T30001 H16 D=E=128 init, state pass split in 2, odd T", 1, 30001, 16, 16, 128, 128,
                           f32),
        lambda: check_case("bf16 B1 T65536 H16 D=E=128 state pass split in 4", 1, 65536, 16, 16, 128, 128, bf),
    ]
    if not args.error_table_only:
        for case in cases[args.skip:]:
            case()
        if args.only is None:
            check_decode()
            check_compile()
    if args.only is None:
        bf16_error_table()
    bad = [r for r in RESULTS if not r[1]]
    print(f"\n{len(RESULTS) - len(bad)}/{len(RESULTS)} checks passed in {time.time() - t0:.0f}s")
    for name, _, detail in bad:
        print(f"FAILED {name}: {detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
