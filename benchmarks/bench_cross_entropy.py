"""Benchmark the fused linear cross-entropy against torch's cross-entropy on full logits.

The LM head of tnl_385m in training: hidden [tokens, 1024] (bf16), tied fp32 weight [64000, 1024], bf16 autocast,
softmax in fp32. Methods: `fused` (tnl.ops.cross_entropy, chunks of 8192 tokens), `torch` (F.linear then
F.cross_entropy on the fp32 logits: the anchor), `checkpointed` (torch per chunk under activation checkpointing,
tnl's previous loss). Forward+backward time (do_bench median, ms), ratio to torch in the same run, peak memory
above the inputs; printed beside it, each method's gradient errors against float64.

    python -m benchmarks.bench_cross_entropy [--tokens 8192 32768] [--d 1024] [--vocab 64000] [--write-md]

--write-md rewrites the `bench_cross_entropy` table of docs/benchmarks.md in place.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
import torch.nn.functional as F
import triton
import triton.testing
from torch.utils.checkpoint import checkpoint

from benchmarks.markdown import current_section, rewrite_section, today
from tnl.ops.cross_entropy import fused_linear_cross_entropy

CHUNK = 8192


def torch_ce(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t)


def checkpointed_ce(h, w, t):
    def block(hc, tc, w_):
        return F.cross_entropy(F.linear(hc, w_).float(), tc, reduction="sum")

    total = sum(checkpoint(block, h[s : s + CHUNK], t[s : s + CHUNK], w, use_reentrant=False)
                for s in range(0, h.shape[0], CHUNK))
    return total / t.numel()


METHODS = {"torch": torch_ce, "checkpointed": checkpointed_ce,
           "fused": lambda h, w, t: fused_linear_cross_entropy(h, w, t, chunk_size=CHUNK)}


def grad_errors(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """Relative errors of h.grad and w.grad against float64 gradients of the mean cross-entropy of h @ w^T (the
    same inputs, chunked so the float64 logits fit)."""
    h64, w64 = h.detach().double(), w.detach().double()
    dh = torch.empty_like(h64)
    dw = torch.zeros_like(w64)
    for start in range(0, h.shape[0], 2048):
        rows = slice(start, start + 2048)
        g = torch.softmax(h64[rows] @ w64.t(), dim=-1)
        g[torch.arange(g.shape[0], device=g.device), t[rows]] -= 1.0
        g /= h.shape[0]
        dh[rows] = g @ w64
        dw += g.t() @ h64[rows]

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    return rel(h.grad, dh), rel(w.grad, dw)


def measure(fn, n: int, d: int, v: int):
    torch.cuda.empty_cache()
    torch.manual_seed(n)  # the same inputs for every method: their losses must agree
    h = torch.randn(n, d, device="cuda", dtype=torch.bfloat16).requires_grad_()
    w = (torch.randn(v, d, device="cuda") * 0.02).requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(h, w, t)
        loss.backward()
        return loss

    try:
        loss = step().item()
        ms = triton.testing.do_bench(step, warmup=25, rep=100, grad_to_none=[h, w], return_mode="median")
        h.grad = w.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        return ms, peak, loss, grad_errors(h, w, t)
    except torch.OutOfMemoryError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=64000)
    ap.add_argument("--write-md", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    lines = ["| tokens | " + " | ".join(f"{m} fwd+bwd ms (peak GiB)" for m in METHODS) + " |",
             "|---" * (len(METHODS) + 1) + "|"]
    for n in args.tokens:
        res = {m: measure(fn, n, args.d, args.vocab) for m, fn in METHODS.items()}
        ref = res["torch"][0] if res["torch"] else None
        cells = []
        for m, r in res.items():
            if r is None:
                cells.append("OOM")
                continue
            ratio = f" ({r[0] / ref:.2f}x)" if ref and m != "torch" else ""
            cells.append(f"{r[0]:.2f}{ratio} ({r[1]:.2f})")
        losses = {m: f"{r[2]:.5f}" for m, r in res.items() if r}
        errors = {m: f"dh {r[3][0]:.1e} dw {r[3][1]:.1e}" for m, r in res.items() if r}
        print(f"tokens {n}: losses {losses}; gradient errors vs float64 {errors}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.write_md:
        cmd = "python -m benchmarks.bench_cross_entropy " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        key = "bench_cross_entropy"
        # the section's own words before its command line stay (a description written by hand)
        title = (current_section(key) or "").split("`python", 1)[0].strip() or "The LM head's loss, forward+backward."
        body = (f"{title} `{cmd}` · {torch.cuda.get_device_name()} · torch {torch.__version__}, triton "
                f"{triton.__version__} · {today()}\n(d = {args.d}, vocab = {args.vocab}, bf16 autocast, fp32 weight; "
                f"ratios to `torch`; cells: ms (peak GiB above the inputs))\n\n{table}\n")
        rewrite_section(key, body, chapter="Fused linear cross-entropy")
        print(f"rewrote <!-- {key} --> in docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
