"""Training speed against sequence length at a fixed number of tokens per step, as the TNL paper draws it.

    python -m benchmarks.bench_seq_len [--size 44m|385m] [--T 1024 2048 ... 65536] [--tokens 65536]
        [--methods tnl tnl_cumsum transformer] [--steps 5] [--warmup 2] [--budget 270]
        [--json FILE] [--write-md] [--png FILE]
    python -m benchmarks.bench_seq_len --from-json FILE --write-md      (tables and plot from an earlier run)

Methods, all the same TransnormerForCausalLM code path (bf16 autocast forward, fused linear cross-entropy in chunks
of 8192 tokens, backward, fused AdamW), B = tokens / T:
  tnl          TNL with lightning attention (the Triton kernels: attn_backend auto)
  tnl_cumsum   the same model with attn_backend=cumsum: the standard linear attention of the paper's baseline
               (left product, states materialised with a cumulative sum); OOM where it does not fit
  transformer  the softmax Transformer of the same size, SDPA held to its flash kernel
--size 44m: configs/model/tnl_44m and transformer_44m (the paper's WikiText-103 pair); 385m: tnl_385m and the
same shape with softmax attention, SwiGLU and RoPE. `--budget` stops measuring after that many seconds (what is
left is "skipped"), so one call stays within a time limit. `--json` keeps the raw numbers; `--write-md` rewrites
the `<!-- bench_seq_len -->` section of docs/results.md and docs/img/seq_len_speed.png.
Imports torch, transformers and tnl only (no hydra, omegaconf or datasets).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "docs" / "results.md"
PNG = ROOT / "docs" / "img" / "seq_len_speed.png"
METHODS = ("tnl", "tnl_cumsum", "transformer")
LABELS = {"tnl": "TNL, lightning attention", "tnl_cumsum": "TNL, standard linear attention (cumsum)",
          "transformer": "Transformer, softmax (SDPA flash)"}
CHUNK = 8192  # fused cross-entropy chunk, as train.loss_chunk_size
SLOW_SECONDS = 10.0  # at most about this long timing one (method, T) after its warmup


def model_config(method: str, size: str):
    """The TransnormerConfig of `method` at `size`."""
    from tools.model_configs import load_config

    if size == "44m":
        if method == "transformer":
            return load_config("transformer_44m")
        return load_config("tnl_44m", attn_backend="cumsum" if method == "tnl_cumsum" else "auto")
    if size == "385m":
        if method == "transformer":
            return load_config("tnl_385m", token_mixer="softmax", channel_mixer="swiglu", position_encoding="rope")
        return load_config("tnl_385m", attn_backend="cumsum" if method == "tnl_cumsum" else "auto")
    raise ValueError(f"unknown size {size!r}")


def measure(method: str, size: str, seq_len: int, tokens: int, steps: int, warmup: int,
            device: str = "cuda") -> dict[str, Any]:
    """tokens/s, peak GiB and parameters of one (method, T); {"oom": True} or {"error": ...} where it cannot run.
    `device` "cpu" only checks that the steps run (no peak memory)."""
    from tnl.model import TransnormerForCausalLM

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        config = model_config(method, size)
    except ValueError as err:  # e.g. an attn_backend this version does not have
        return {"error": str(err).splitlines()[0]}
    model = opt = None
    try:
        with torch.device(device):
            model = TransnormerForCausalLM(config)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
        b = max(1, tokens // seq_len)
        gen = torch.Generator(device=device).manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (b, seq_len + 1), device=device, generator=gen)
        x, y = ids[:, :-1], ids[:, 1:]
        flash = contextlib.nullcontext
        if method == "transformer":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            flash = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)  # noqa: E731 (a fresh context per step)

        def step() -> None:
            with flash(), torch.autocast(device, dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=y, shift_labels=False, loss_chunk_size=CHUNK).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(max(warmup, 1)):  # at least one: it compiles, tunes and allocates
            t0 = time.perf_counter()
            step()
            sync()
        # a slow method (seconds per step) is timed over fewer steps, so the other rows still fit the budget
        steps = max(1, min(steps, int(SLOW_SECONDS / max(time.perf_counter() - t0, 1e-9))))
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        dt = (time.perf_counter() - t0) / steps
        mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        return {"tps": b * seq_len / dt, "step_ms": dt * 1e3, "mem": mem, "steps": steps,
                "params": sum(p.numel() for p in model.parameters()), "batch": b}
    except torch.OutOfMemoryError:
        return {"oom": True}
    except (RuntimeError, ValueError, NotImplementedError) as err:  # a backend that cannot run this shape
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    finally:
        model = opt = None  # noqa: F841 (freed before the next measurement)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def cell(r: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    if r is None:
        return "skipped"
    if r.get("oom"):
        return "OOM"
    if "error" in r:
        return "n/a"
    ratio = f" ({r['tps'] / base['tps']:.2f}x)" if base and "tps" in base and base is not r else ""
    return f"{r['tps'] / 1e3:,.1f}k{ratio}, {r['mem']:.1f} GiB"


def table(data: dict[str, Any]) -> str:
    methods, rows = data["methods"], data["rows"]
    head = "| T | B | " + " | ".join(LABELS[m] for m in methods) + " |\n|" + "---|" * (len(methods) + 2) + "\n"
    body = ""
    for row in rows:
        res = row["results"]
        body += (f"| {row['T']:,} | {max(1, data['tokens'] // row['T'])} | "
                 + " | ".join(cell(res.get(m), res.get("tnl")) for m in methods) + " |\n")
    sizes = {}
    for row in rows:
        for m in methods:
            r = row["results"].get(m) or {}
            if "params" in r:
                sizes.setdefault(m, r["params"])
    notes = [", ".join(f"{LABELS[m]}: {p / 1e6:.1f}M parameters" for m, p in sizes.items())]
    for m in methods:
        tps = [row["results"][m]["tps"] for row in rows if "tps" in (row["results"].get(m) or {})]
        if len(tps) > 1:
            notes.append(f"{LABELS[m]}: tokens/s at the longest T it ran is {tps[-1] / tps[0]:.2f}x that at the "
                         "shortest")
    errors = {f"{LABELS[m]}: {row['results'][m]['error']}" for row in rows for m in methods
              if "error" in (row["results"].get(m) or {})}
    notes += sorted(f"n/a = {e}" for e in errors)
    return (head + body + "\nTraining tokens/s (k), ratio to lightning attention in the same row, peak GiB. "
            + ". ".join(n for n in notes if n) + ".\n")


def plot(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in data["methods"]:
        pts = [(row["T"], row["results"][m]["tps"]) for row in data["rows"] if "tps" in (row["results"].get(m) or {})]
        oom = [row["T"] for row in data["rows"] if (row["results"].get(m) or {}).get("oom")]
        color = None
        if pts:
            color = ax.plot(*zip(*pts), "o-", label=LABELS[m])[0].get_color()
        if oom:
            color = ax.plot(oom, [0] * len(oom), "x", ms=9, color=color, clip_on=False,
                            label=None if pts else f"{LABELS[m]}: OOM")[0].get_color()
            ax.annotate("OOM", (oom[0], 0), textcoords="offset points", xytext=(0, 6), fontsize=7, color=color)
    ax.set_xscale("log", base=2)
    ticks = [row["T"] for row in data["rows"]]
    ax.set_xticks(ticks, [f"{t // 1024}k" if t >= 1024 else str(t) for t in ticks])
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel("training tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{data['device']}, {data['size']} models, {data['tokens']:,} tokens per step", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_md(data: dict[str, Any], png: Path) -> None:
    """The section of docs/results.md (command, device, versions, date, table, plot)."""
    import os

    from benchmarks.markdown import rewrite_section

    plot(data, png)
    rel = Path(os.path.relpath(png, RESULTS_MD.parent)).as_posix()
    body = (f"`{data['command']}`\n· {data['device']} · {data['versions']} · {data['date']}\n\n{table(data)}\n"
            f"![training tokens/s against sequence length]({rel})\n")
    if not RESULTS_MD.exists():
        from tnl.compare.report import INTRO

        RESULTS_MD.write_text(INTRO)
    rewrite_section("bench_seq_len", body, chapter="Speed against sequence length", path=RESULTS_MD)
    print(f"rewrote <!-- bench_seq_len --> in {RESULTS_MD} and {png}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.markdown import today

    if not torch.cuda.is_available():
        sys.exit("bench_seq_len needs a CUDA GPU (or --from-json FILE)")
    if any(args.tokens < t for t in args.T):
        sys.exit(f"--tokens {args.tokens} is below the longest T {max(args.T)}: a step must hold one sequence")
    versions = f"torch {torch.__version__}"
    with contextlib.suppress(ImportError):
        import triton

        versions += f", triton {triton.__version__}"
    shown = []  # the command as docs show it: without where this machine kept its files or its time limit
    skip = False
    for a in sys.argv[1:]:
        if skip or a.startswith(("--json=", "--budget=")):
            skip = False
            continue
        if a in ("--json", "--budget"):
            skip = True
            continue
        shown.append(shlex.quote(a))
    data = {"command": " ".join(["python -m benchmarks.bench_seq_len", *shown]),
            "device": torch.cuda.get_device_name(), "versions": versions, "date": today(), "size": args.size,
            "tokens": args.tokens, "methods": list(args.methods), "rows": []}
    start = time.monotonic()
    for t in args.T:
        row = {"T": t, "results": {}}
        data["rows"].append(row)
        for m in args.methods:  # printed as they come: a call cut off by a time limit keeps what it measured
            if time.monotonic() - start > args.budget:
                row["results"][m] = None
                continue
            row["results"][m] = measure(m, args.size, t, args.tokens, args.steps, args.warmup)
            print(f"T={t} {m}: {row['results'][m]}", flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(data, indent=1))
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["44m", "385m"], default="44m")
    ap.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--tokens", type=int, default=65536, help="tokens per step (B = tokens / T)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget", type=float, default=270, help="seconds of measuring; what is left is skipped")
    ap.add_argument("--json", help="write the raw results here (after each T)")
    ap.add_argument("--from-json", help="no measuring: the table and plot of an earlier --json")
    ap.add_argument("--write-md", action="store_true", help="rewrite the section of docs/results.md and the plot")
    ap.add_argument("--png", default=str(PNG), help="the plot's path (with --write-md)")
    args = ap.parse_args()
    data = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args)
    print(table(data))
    if args.write_md:
        write_md(data, Path(args.png))


if __name__ == "__main__":
    main()
