"""Benchmark tnl's public lightning_attn against fla, lightning-attn and softmax SDPA (flash, causal).

bf16, H=16, B*T=65,536 tokens, T in {1k..64k}; head dims (D,E) in {(128,128), (64,64), (256,128)}.
Times are triton.testing.do_bench medians (ms) of the forward and of forward+backward on random inputs;
ratios are to fla measured in the same run; memory is the peak allocated during fwd+bwd above the inputs.

    python -m benchmarks.bench_attention [--dims 128,128 64,64 256,128] [--T 1024 ...] [--write-md]
        [--methods tnl tnl_reverse tnl_internal tnl_ptr tnl_cumsum fla lightning-attn sdpa]
        (tnl: the public `lightning_attn`, what users call; tnl_reverse: the same with reverse=True (the notes
        give its time over tnl's per row); tnl_internal: the Triton entry point behind it, without the public
        checks; tnl_ptr: the public call with tnl's configs without TMA descriptors, KernelOptions(tma=False);
        tnl_cumsum: backend="cumsum", standard linear attention with materialised states, n/a where it does not
        fit in memory)
        [--host]   (adds each method's host CPU time per fwd+bwd call: launch-bound when close to its time)
        [--kernels] (adds each method's GPU kernel time per fwd+bwd call, from the profiler: what the time would
                     be without host overhead; do_bench above it means the call is host-bound)
        [--heads 16] [--tokens 65536]

--write-md rewrites this run's tables in docs/benchmarks.md in place: one section per D,E, keyed
`bench_attention D=<D>` (`others D=<D>` without tnl; H=8, B*T=32,768: one section, `training shape`); `--md-key`
names another.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time

import torch
import triton
import triton.testing

from benchmarks.markdown import current_section, rewrite_section, today
from tnl.ops import lightning_attn
from tnl.ops.lightning_attn.options import override_kernel_options
from tnl.ops.lightning_attn.triton_entry import triton_lightning_attn

TOKENS = 65536
H = 16
# tnl's methods: (KernelOptions changes, lightning_attn keyword arguments); "internal" times the Triton entry point
TNL_METHODS = {
    "tnl": ({}, {}),
    "tnl_reverse": ({}, {"reverse": True}),
    "tnl_internal": ({}, {"internal": True}),
    "tnl_ptr": ({"tma": False}, {}),
    "tnl_cumsum": ({}, {"backend": "cumsum"}),
}


def slopes(h: int) -> torch.Tensor:
    return torch.tensor([2 ** (-8 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def load_impls():
    impls = {}
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        impls["fla"] = chunk_simple_gla
    except Exception as exc:  # noqa: BLE001
        print(f"fla not available ({type(exc).__name__}: {exc})")
    try:
        from lightning_attn.ops import lightning_attn_func

        impls["lightning-attn"] = lightning_attn_func
    except Exception as exc:  # noqa: BLE001
        print(f"lightning-attn not available ({type(exc).__name__}: {exc})")
    return impls


def make_fns(name, impls, b, t, d, e):
    """Returns (fwd_fn, leaves) or None when the method does not apply to this shape."""
    dev, dt = "cuda", torch.bfloat16
    decay = slopes(H).to(dev)
    if name in (*TNL_METHODS, "fla"):
        q = torch.randn(b, t, H, d, device=dev, dtype=dt).requires_grad_()
        k = torch.randn(b, t, H, d, device=dev, dtype=dt).requires_grad_()
        v = torch.randn(b, t, H, e, device=dev, dtype=dt).requires_grad_()
        if name in TNL_METHODS:
            kw = dict(TNL_METHODS[name][1])
            fn = triton_lightning_attn if kw.pop("internal", False) else lightning_attn
            return (lambda: fn(q, k, v, decay, scale=1.0, **kw)[0]), [q, k, v]
        fla = impls["fla"]
        g_gamma = -decay
        return (lambda: fla(q, k, v, g_gamma=g_gamma, scale=1.0)[0]), [q, k, v]
    # the others take [B, H, T, D]
    q = torch.randn(b, H, t, d, device=dev, dtype=dt).requires_grad_()
    k = torch.randn(b, H, t, d, device=dev, dtype=dt).requires_grad_()
    v = torch.randn(b, H, t, e, device=dev, dtype=dt).requires_grad_()
    if name == "lightning-attn":
        la = impls["lightning-attn"]
        s = decay.view(H, 1, 1).contiguous()
        return (lambda: la(q, k, v, s)), [q, k, v]
    if name == "sdpa":
        if d != e:
            return None
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def fwd():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        return fwd, [q, k, v]
    raise ValueError(name)


def host_ms(fn, leaves, n: int = 20) -> float:
    """Host (CPU) milliseconds per call of `fn`: n calls back to back, timed before the closing sync. Close to the
    do_bench time means the call is bound by Python and launch overhead, not by its kernels (at D=64 it was)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
        for x in leaves:
            x.grad = None
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return elapsed / n * 1e3


def kernel_ms(fn, leaves, n: int = 10) -> float:
    """GPU milliseconds per call of `fn` summed over the kernels it launches (CUDA activity of the profiler only,
    so no CPU-side op is counted twice): the call's time when the host keeps up."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
            for x in leaves:
                x.grad = None
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages()) / n / 1e3


def warm_up_gpu(seconds: float = 2.0) -> None:
    """Run matrix products for a while first: an idle H100 sits at low clocks, and the first method timed in a
    process measured up to 3x slower than the same kernel timed later."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def measure(name, impls, b, t, d, e, host: bool = False, kernels: bool = False):
    # the options are read at each launch: every call of the method runs inside them
    opts = override_kernel_options(**TNL_METHODS[name][0]) if name in TNL_METHODS else contextlib.nullcontext()
    with opts:
        return _measure(name, impls, b, t, d, e, host, kernels)


def _measure(name, impls, b, t, d, e, host: bool, kernels: bool):
    torch.cuda.empty_cache()
    try:
        made = make_fns(name, impls, b, t, d, e)
        if made is None:
            return None
        fwd, leaves = made
        out = fwd()
        grad = torch.randn_like(out)

        def fwd_bwd():
            torch.autograd.backward(fwd(), grad)

        fwd_bwd()
        torch.cuda.synchronize()
        with torch.no_grad():
            f_ms = triton.testing.do_bench(fwd, warmup=50, rep=200, return_mode="median")
        fb_ms = triton.testing.do_bench(fwd_bwd, warmup=50, rep=200, grad_to_none=leaves, return_mode="median")
        del out
        for x in leaves:
            x.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        mem = (torch.cuda.max_memory_allocated() - base) / 2**20
        kern = None
        if kernels:  # a profiler failure costs this column only, not the row
            try:
                kern = kernel_ms(fwd_bwd, leaves)
            except Exception as exc:  # noqa: BLE001
                print(f"  {name} T={t}: kernel timing failed: {type(exc).__name__}: {str(exc)[:120]}")
        return f_ms, fb_ms, mem, (host_ms(fwd_bwd, leaves) if host else None), kern
    except Exception as exc:  # noqa: BLE001
        print(f"  {name} T={t} D={d} E={e}: {type(exc).__name__}: {str(exc)[:160]}")
        return None


def fmt(x, ref=None):
    if x is None:
        return "n/a"
    return f"{x:.3f}" + (f" ({x / ref:.2f}x)" if ref else "")


def main() -> int:
    global H, TOKENS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", nargs="+", default=["128,128", "64,64", "256,128"])
    ap.add_argument("--T", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--methods", nargs="+", default=["tnl", "fla", "lightning-attn", "sdpa"])
    ap.add_argument("--write-md", action="store_true",
                    help="rewrite this run's tables in docs/benchmarks.md (one section per D,E)")
    ap.add_argument("--md-key", help="with --write-md: one section under this marker key instead (H=8, "
                    "B*T=32,768: 'bench_attention training shape')")
    ap.add_argument("--host", action="store_true", help="also report host CPU ms per fwd+bwd call")
    ap.add_argument("--kernels", action="store_true", help="also report GPU kernel ms per fwd+bwd call (profiler)")
    ap.add_argument("--heads", type=int, default=H, help="heads (tnl_385m trains with 8)")
    ap.add_argument("--tokens", type=int, default=TOKENS, help="B*T (tnl_385m trains with 32,768 per step)")
    args = ap.parse_args()
    H, TOKENS = args.heads, args.tokens
    torch.manual_seed(0)
    impls = load_impls()
    warm_up_gpu()
    methods = [m for m in args.methods if m in (*TNL_METHODS, "sdpa") or m in impls]
    missing = [m for m in args.methods if m not in methods]
    device = torch.cuda.get_device_name()
    lines = []
    header = ("| D,E | T | B | " + " | ".join(f"{m} fwd" for m in args.methods) + " | "
              + " | ".join(f"{m} fwd+bwd" for m in args.methods)
              + "".join(f" | {m} host ms" for m in args.methods if args.host)
              + "".join(f" | {m} kernels ms" for m in args.methods if args.kernels) + " | tnl mem MiB | fla mem MiB |")
    lines.append(header)
    lines.append("|" + "---|" * (header.count("|") - 1))
    flat = {}
    reverse_notes = []
    for dims in args.dims:
        d, e = (int(x) for x in dims.split(","))
        for t in args.T:
            b = max(1, TOKENS // t)
            res = {m: measure(m, impls, b, t, d, e, args.host, args.kernels) for m in methods}
            for m in missing:
                res[m] = None
            ref = res.get("fla")
            rf, rfb = (ref[0], ref[1]) if ref else (None, None)
            fw = [fmt(res[m][0] if res[m] else None, rf if m != "fla" else None) for m in args.methods]
            fb = [fmt(res[m][1] if res[m] else None, rfb if m != "fla" else None) for m in args.methods]
            mem = [f"{res[m][2]:.0f}" if res.get(m) else "n/a" for m in ("tnl", "fla")]
            hosts = [fmt(res[m][3] if res[m] else None) for m in args.methods] if args.host else []
            kerns = [fmt(res[m][4] if res[m] else None) for m in args.methods] if args.kernels else []
            line = f"| {d},{e} | {t} | {b} | " + " | ".join(fw + fb + hosts + kerns + mem) + " |"
            lines.append(line)
            print(line, flush=True)
            if res.get("tnl"):
                flat.setdefault((d, e), []).append((res["tnl"][0] / (b * t), res["tnl"][1] / (b * t)))
                if res.get("tnl_reverse"):
                    rev = res["tnl_reverse"]
                    reverse_notes.append(f"tnl D,E={d},{e}: reverse / forward at T={t}: fwd "
                                         f"{rev[0] / res['tnl'][0]:.2f}, fwd+bwd {rev[1] / res['tnl'][1]:.2f}")
    notes = []
    for (d, e), per_tok in flat.items():
        f = [x[0] for x in per_tok]
        fb = [x[1] for x in per_tok]
        notes.append(f"tnl D,E={d},{e}: time per token max/min over T: fwd {max(f) / min(f):.2f}, "
                     f"fwd+bwd {max(fb) / min(fb):.2f}")
    notes += reverse_notes
    table = "\n".join(lines)
    print("\n" + table)
    for n in notes:
        print(n)
    if args.write_md:
        write_md(args, lines, notes, device)
    return 0


def _title(d: int, e: int) -> str:
    return f"**D = E = {d}.**" if d == e else f"**D = {d}, E = {e}.**"


def write_md(args, lines: list[str], notes: list[str], device: str) -> None:
    """Rewrite this run's sections of docs/benchmarks.md: one per D,E (rows of that D,E), or one under --md-key."""
    cmd = "python -m benchmarks.bench_attention " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    versions = f"torch {torch.__version__}, triton {triton.__version__}"
    try:
        import fla

        versions += f", fla {getattr(fla, '__version__', '?')}"
    except Exception:  # noqa: BLE001
        pass
    header, rows = lines[:2], lines[2:]
    key = args.md_key or ("bench_attention training shape" if (H, TOKENS) == (8, 32768) else None)
    groups = {key: (None, rows)} if key else {}
    if not key:
        for dims in args.dims:
            d, e = (int(x) for x in dims.split(","))
            prefix = "" if "tnl" in args.methods else "others "
            suffix = "" if (H, TOKENS) == (16, 65536) else f" H={H} tokens={TOKENS}"
            mine = [r for r in rows if r.startswith(f"| {d},{e} |")]
            groups[f"bench_attention {prefix}D={d}{suffix}"] = ((d, e), mine)
    for key, (dims, group) in groups.items():
        # the section's own words before its command line stay (a title written by hand)
        first = (current_section(key) or "").split("`python", 1)[0].strip()
        title = first or (_title(*dims) if dims else f"**{key}.**")
        shape = f"H={H}, B*T={TOKENS:,}"
        mine = [n for n in notes if dims is None or n.startswith(f"tnl D,E={dims[0]},{dims[1]}:")]
        body = (f"{title} `{cmd}`\n· {device} · {versions} · {shape} · {today()}\n\n" + "\n".join(header + group)
                + "\n" + "".join(f"\n- {n}" for n in mine) + "\n")
        rewrite_section(key, body, chapter="Lightning attention kernel")
        print(f"rewrote <!-- {key} --> in docs/benchmarks.md")


if __name__ == "__main__":
    raise SystemExit(main())
