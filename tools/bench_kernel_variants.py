"""A/B-time edited copies of the lightning-attention Triton kernels against the current ones, in one process.

    python -m tools.bench_kernel_variants VARIANT.py [VARIANT.py ...]
        [--shapes 64,1024,128,128 1,65536,128,128] [--heads 16] [--rounds 2] [--fwd-only]

A variant is a copy of tnl/ops/lightning_attn/triton_kernels.py with edits (same kernel names and arguments).
Each round times the current kernels and every variant back to back on the same inputs and with the same launch
configs (on an H100 the spread between machines, and between processes, is larger than most single changes: the
kernels' two reorderings of loads and dots were found this way), and checks each variant's output and gradients
against the current kernels' (exit status 1 beyond --tol). Without CUDA it runs under TRITON_INTERPRET=1 as a
correctness check only: its times mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from benchmarks.bench_attention import slopes, warm_up_gpu
from tnl.ops.lightning_attn import passes, tuning
from tnl.ops.lightning_attn.triton_entry import triton_lightning_attn
from tnl.settings import triton_interpret


def load_variant(path: str):
    spec = importlib.util.spec_from_file_location(f"variant_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # triton.jit needs the kernels' source file, so variants are real files
    return module


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def time_shape(kernels, shape: str, heads: int, rnd: int, device: str, dtype: torch.dtype,
               fwd_only: bool) -> list[tuple]:
    """(round, shape, kernels' name, fwd ms, fwd+bwd ms, max relative difference to the first kernels) per kernels."""
    import triton

    b, t, d, e = (int(x) for x in shape.split(","))
    torch.manual_seed(rnd)
    decay = slopes(heads).to(device)
    leaves = [torch.randn(b, t, heads, n, device=device, dtype=dtype).requires_grad_() for n in (d, d, e)]
    go = torch.randn(b, t, heads, e, device=device, dtype=dtype)

    def fwd():
        return triton_lightning_attn(*leaves, decay, scale=d ** -0.5)[0]

    def fwd_bwd():
        torch.autograd.backward(fwd(), go)

    rows, base = [], None
    for name, module in kernels:
        passes._k = module  # the kernels module the passes launch from
        tuning._CHOSEN.clear()  # the launch memo; the tuned choice (shipped or cached) stays the same
        o = fwd()
        outs = [o.detach()] + list(torch.autograd.grad(o, leaves, go))
        base = base or outs
        diff = max(rel(x, y) for x, y in zip(outs, base))
        f_ms = fb_ms = float("nan")
        if device == "cuda":
            with torch.no_grad():
                f_ms = triton.testing.do_bench(fwd, warmup=50, rep=200, return_mode="median")
            if not fwd_only:
                fb_ms = triton.testing.do_bench(fwd_bwd, warmup=50, rep=200, grad_to_none=leaves,
                                                return_mode="median")
        rows.append((rnd, shape, name, f_ms, fb_ms, diff))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="edited copies of tnl/ops/lightning_attn/triton_kernels.py")
    ap.add_argument("--shapes", nargs="+", default=["64,1024,128,128", "1,65536,128,128"], help="B,T,D,E")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fwd-only", action="store_true")
    ap.add_argument("--tol", type=float, default=None, help="max relative difference to the current kernels "
                    "(default 2e-2 in bf16 on CUDA, 1e-5 in fp32 under the interpreter)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not triton_interpret():
        sys.exit("no CUDA device: run with TRITON_INTERPRET=1 to check variants for correctness on the CPU")

    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    tol = args.tol if args.tol is not None else (2e-2 if cuda else 1e-5)
    kernels = [("current", passes._k)] + [(Path(p).name, load_variant(p)) for p in args.variants]
    if cuda:
        warm_up_gpu()
    rows = []
    try:
        for rnd in range(args.rounds):
            for shape in args.shapes:
                rows += time_shape(kernels, shape, args.heads, rnd, device, dtype, args.fwd_only)
    finally:
        passes._k = kernels[0][1]
    worst = max(r[-1] for r in rows)
    ref = {(r, s): (f, fb) for r, s, n, f, fb, _ in rows if n == "current"}
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (interpreter: correctness only)'}, "
          f"H={args.heads}, {str(dtype).replace('torch.', '')}")
    print("| round | B,T,D,E | kernels | fwd ms | fwd+bwd ms | max rel diff to current |")
    print("|---|---|---|---|---|---|")

    def timed(ms: float, ms0: float) -> str:
        return "-" if ms != ms else f"{ms:.3f} ({ms / ms0:.2f}x)"  # NaN: not timed

    for rnd, shape, name, f_ms, fb_ms, diff in rows:
        f0, fb0 = ref[(rnd, shape)]
        print(f"| {rnd} | {shape} | {name} | {timed(f_ms, f0)} | {timed(fb_ms, fb0)} | {diff:.1e} |")
    if worst > tol:
        print(f"FAIL: a variant differs from the current kernels by {worst:.1e} (> {tol:.0e})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
