"""Training throughput on one GPU: tnl_385m vs fla's RetNet and HF Llama (SDPA) of about the same size.

python -m benchmarks.bench_train [--T 2048 4096 ...] [--tokens 32768] [--methods tnl tnl_compiled retnet llama]
                                 [--profile T ...] [--write-md [--md-key KEY]] [--memory-budget B]
                                 [--compile-mode MODE] [--model FIELD=VALUE ...]
Methods: tnl (eager), tnl_compiled (torch.compile as train.compile=true: pointwise results recomputed in
backward), tnl_compiled_keep (the stock partitioner, which keeps them), retnet (fla), llama (HF, SDPA).
Each step: bf16 autocast forward and loss (tnl: fused linear cross-entropy), backward, fused AdamW;
32k tokens per step (B = tokens / T). `--model` sets tnl_385m's config fields for the tnl methods (e.g.
`--model fused_mixer=false fold_qk_activation=false norm_backend=torch` for an A/B of those settings).
Prints tokens/s, MFU (tnl.train.flops: linear attention's real FLOPs; 6N + softmax attention for Llama) and
peak memory, with each time's ratio to fla's RetNet measured in the same run. fla and Llama are
benchmark-only (fla: pip install --no-deps fla-core flash-linear-attention). `--write-md` rewrites the table's
section of docs/benchmarks.md in place (`<!-- bench_train -->`, or `--md-key`).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import yaml

D, LAYERS, HEADS, FFN, VOCAB = 1024, 24, 8, 2816, 64000
METHODS = ["tnl", "tnl_compiled", "tnl_compiled_keep", "retnet", "llama"]
MEMORY_BUDGET = 1.0  # --memory-budget: train.compile_memory_budget for tnl_compiled*
COMPILE_MODE = None  # --compile-mode: torch.compile's mode for tnl_compiled*
MODEL_FIELDS: dict = {}  # --model: TransnormerConfig fields set for the tnl methods


def build(method: str) -> torch.nn.Module | None:
    if method.startswith("tnl"):
        from tnl.model import TransnormerForCausalLM
        from tools.model_configs import load_config

        return TransnormerForCausalLM(load_config("tnl_385m", **MODEL_FIELDS))
    if method == "retnet":
        try:
            from fla.models import RetNetConfig, RetNetForCausalLM
        except ImportError:
            return None
        cfg = RetNetConfig(hidden_size=D, num_hidden_layers=LAYERS, num_heads=HEADS, vocab_size=VOCAB,
                           intermediate_size=FFN, tie_word_embeddings=True)
        return RetNetForCausalLM(cfg)
    if method == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=16, intermediate_size=FFN,
                          vocab_size=VOCAB, max_position_embeddings=65536, tie_word_embeddings=True,
                          attn_implementation="sdpa")
        return LlamaForCausalLM(cfg)
    raise ValueError(f"unknown method {method}")


def flops_per_token(method: str, model: torch.nn.Module, seq_len: int) -> float:
    from tnl.train.flops import train_flops_per_token

    if method.startswith("tnl"):
        return train_flops_per_token(model, seq_len)
    n = sum(p.numel() for p in model.parameters())
    if method == "llama":
        return 6 * n + 3 * LAYERS * 2 * seq_len * D  # causal softmax attention
    return 6 * n + 3 * LAYERS * HEADS * (64 * 2 * (D // HEADS) + 4 * (D // HEADS) ** 2)  # chunked retention


def measure(method: str, seq_len: int, tokens: int, steps: int, warmup: int, profile: bool = False) -> dict | None:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):  # initialise on the GPU: a 400M model's CPU init takes longer than the benchmark
        model = build(method)
    if model is None:
        return None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    b = max(1, tokens // seq_len)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, VOCAB, (b, seq_len + 1), device="cuda", generator=gen)
    x, y = ids[:, :-1], ids[:, 1:]
    fwd = model
    if method.startswith("tnl_compiled"):
        from tnl.train.compile import compile_for_training

        fwd = compile_for_training(model, MEMORY_BUDGET, recompute_pointwise=method != "tnl_compiled_keep",
                                   mode=COMPILE_MODE)

    def step():
        if COMPILE_MODE:  # CUDA graphs (reduce-overhead, max-autotune): the previous step's outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if method.startswith("tnl"):  # as the training loop does with train.loss_chunk_size (tnl_385m experiment)
                loss = fwd(input_ids=x, labels=y, shift_labels=False, loss_chunk_size=8192).loss
            else:  # HF-style labels, shifted inside (fla's RetNet uses its fused cross-entropy)
                loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
    except torch.OutOfMemoryError:
        return {"oom": True}
    if profile:  # where a step's GPU time goes, kernel by kernel
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        print(f"# {method} T={seq_len}: one step's CUDA kernels\n"
              + prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    tps = b * seq_len / dt
    from tnl.train.flops import peak_flops

    peak = peak_flops(torch.device("cuda"))
    mfu = tps * flops_per_token(method, model, seq_len) / peak if peak else float("nan")
    params = sum(p.numel() for p in model.parameters())
    mem = torch.cuda.max_memory_allocated() / 2**30
    return {"tps": tps, "mfu": mfu, "mem": mem, "params": params}


def parse_fields(pairs: list[str], ap: argparse.ArgumentParser) -> dict:
    """FIELD=VALUE strings as a dict, each value read as YAML (false, 2048, torch)."""
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            ap.error(f"--model takes FIELD=VALUE, got {pair!r}")
        fields[key] = yaml.safe_load(value)
    return fields


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--methods", nargs="+", default=["tnl", "retnet", "llama"], choices=METHODS)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--write-md", action="store_true", help="rewrite this table's section of docs/benchmarks.md")
    ap.add_argument("--md-key", default="bench_train", help="with --write-md: the section's marker key")
    ap.add_argument("--profile", type=int, nargs="*", default=[], help="print a kernel profile at these T")
    ap.add_argument("--memory-budget", type=float, default=1.0,
                    help="tnl_compiled*: torch.compile's activation memory budget (train.compile_memory_budget)")
    ap.add_argument("--compile-mode", default=None, help="tnl_compiled*: torch.compile mode (e.g. reduce-overhead)")
    ap.add_argument("--model", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="tnl*: model config fields (e.g. fused_mixer=false); values are read as YAML")
    args = ap.parse_args()
    global MEMORY_BUDGET, COMPILE_MODE, MODEL_FIELDS
    MEMORY_BUDGET, COMPILE_MODE = args.memory_budget, args.compile_mode
    MODEL_FIELDS = parse_fields(args.model, ap)
    if not torch.cuda.is_available():
        sys.exit("bench_train needs a CUDA GPU")
    rows = []
    for t in args.T:
        res = {}
        for m in args.methods:  # printed as they come: a call cut off by a time limit keeps what it measured
            res[m] = measure(m, t, args.tokens, args.steps, args.warmup, t in args.profile)
            print(f"T={t} {m}: {res[m]}", flush=True)
        rows.append((t, res))

    def cell(r, base):
        if r is None:
            return "n/a"
        if r.get("oom"):
            return "OOM"
        ratio = f" ({r['tps'] / base['tps']:.2f}x)" if base and not base.get("oom") else ""
        return f"{r['tps'] / 1e3:,.1f}k{ratio}, MFU {r['mfu']:.0%}, {r['mem']:.1f} GiB"

    header = "| T | B | " + " | ".join(args.methods) + " |\n|" + "---|" * (len(args.methods) + 2) + "\n"
    body = "".join(
        f"| {t} | {max(1, args.tokens // t)} | "
        + " | ".join(cell(res[m], res.get("retnet")) for m in args.methods) + " |\n"
        for t, res in rows
    )
    sizes = {m: next((r[m]["params"] for _, r in rows if r[m] and "params" in r[m]), None) for m in args.methods}
    note = ", ".join(f"{m} {p / 1e6:.0f}M params" for m, p in sizes.items() if p)
    flats = []
    for m in (m for m in args.methods if m.startswith("tnl")):
        tps = [r[m]["tps"] for _, r in rows if r.get(m) and "tps" in r[m]]
        if tps:
            flats.append(f"{m} tokens/s max/min over T: {max(tps) / min(tps):.2f}")
    flat = "; ".join(flats)
    table = header + body + f"\n{note}. {flat}. Ratios are to fla's RetNet in the same run.\n"
    print(table)
    if args.write_md:
        write_md(args.md_key, table)


def write_md(key: str, table: str) -> None:
    """Put the table, with its command, device, versions and date, in its section of docs/benchmarks.md."""
    from benchmarks.markdown import rewrite_section, stamp

    body = f"{stamp('benchmarks.bench_train', ('triton', 'fla'))}\n\n{table}"
    rewrite_section(key, body, chapter="Training throughput")
    print(f"rewrote <!-- {key} --> in docs/benchmarks.md")


if __name__ == "__main__":
    main()
