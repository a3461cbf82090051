"""Decode throughput of `tnl generate`'s decoding loop on one GPU: tnl_385m vs an HF Llama of the same size.

python -m benchmarks.bench_generate [--contexts 1024 32768] [--batches 1 8] [--new-tokens 128]
                                    [--methods tnl tnl_eager llama] [--prefill-chunk 8192]
                                    [--write-md [--md-key KEY]]

Each row: B random prompts of `context` tokens, then `--new-tokens` greedy tokens, through
tnl.generate.generate_ids (the loop `tnl generate` runs; EOS off so every row decodes all tokens). Methods: tnl (the
decode step replayed from a CUDA graph, what `tnl generate` uses on a GPU), tnl_eager (the same loop without the
graph), llama (HF LlamaForCausalLM, SDPA, its KV cache, same width/depth/heads/FFN/vocab). Random weights, bf16.
Prints decode and prefill tokens/s and peak memory; each configuration runs once untimed first (Triton
compilation and autotuning, cuBLAS heuristics). `--write-md` rewrites the table's section of docs/benchmarks.md
(`<!-- bench_generate -->`, or `--md-key`). Imports no hydra, omegaconf or datasets.
"""

from __future__ import annotations

import argparse
import gc
import sys

import torch

METHODS = ["tnl", "tnl_eager", "llama"]


def build(method: str) -> torch.nn.Module:
    from tools.model_configs import load_config

    cfg = load_config("tnl_385m")
    torch.manual_seed(0)
    if method.startswith("tnl"):
        from tnl.model import TransnormerForCausalLM

        model = TransnormerForCausalLM(cfg)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.decoder_embed_dim, intermediate_size=cfg.glu_dim,
            num_hidden_layers=cfg.decoder_layers, num_attention_heads=cfg.decoder_attention_heads,
            num_key_value_heads=cfg.decoder_attention_heads, max_position_embeddings=65536 + 1024,
            tie_word_embeddings=True, attn_implementation="sdpa", bos_token_id=None, eos_token_id=None,
        ))
    return model.to(device="cuda", dtype=torch.bfloat16).eval()


def measure(model: torch.nn.Module, method: str, context: int, batch: int, new_tokens: int,
            prefill_chunk: int) -> dict:
    from tnl.generate import SamplingSettings, generate_ids

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(context + batch)
    prompts = torch.randint(1, vocab, (batch, context), generator=gen).tolist()
    graph = method != "tnl_eager"
    try:
        for steps in (4, new_tokens):  # the first run is the warm-up
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            out = generate_ids(model, prompts, SamplingSettings(max_new_tokens=steps, temperature=0),
                               pad_token_id=0, use_graph=graph, prefill_chunk=prefill_chunk)
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    return {
        "decode": out.new_tokens / out.decode_seconds,
        "prefill": out.prompt_tokens / out.prefill_seconds,
        "mem": torch.cuda.max_memory_allocated() / 2**30,
        "graphed": out.graphed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 32768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--prefill-chunk", type=int, default=8192,
                    help="TNL prompt tokens per prefill pass (tnl generate's default prefill_chunk; 0: all at once)")
    ap.add_argument("--write-md", action="store_true", help="rewrite this table's section of docs/benchmarks.md")
    ap.add_argument("--md-key", default="bench_generate", help="with --write-md: the section's marker key")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_generate needs a CUDA GPU")
    models = {m: build(m if m != "tnl_eager" else "tnl") for m in args.methods if m != "tnl_eager"}
    if "tnl_eager" in args.methods:
        models["tnl_eager"] = models.get("tnl") or build("tnl")
    params = {m: sum(p.numel() for p in mod.parameters()) for m, mod in models.items()}
    rows = []
    for context in args.contexts:
        for batch in args.batches:
            res = {}
            for m in args.methods:  # printed as they come: a run cut off by a time limit keeps what it measured
                res[m] = measure(models[m], m, context, batch, args.new_tokens, args.prefill_chunk)
                print(f"context={context} B={batch} {m}: {res[m]}", flush=True)
            rows.append((context, batch, res))

    def cell(r: dict, key: str) -> str:
        return "OOM" if r.get("oom") else f"{r[key]:,.0f}"

    def ratio(res: dict) -> str:
        tnl, llama = res.get("tnl"), res.get("llama")
        if not tnl or not llama or tnl.get("oom"):
            return "n/a"
        return "inf (Llama OOM)" if llama.get("oom") else f"{tnl['decode'] / llama['decode']:.1f}x"

    side = [m for m in args.methods if m != "tnl_eager"]  # the eager loop's prefill and memory are tnl's
    header = ("| context | B | " + " | ".join(f"{m} decode tok/s" for m in args.methods) + " | tnl / llama | "
              + " | ".join(f"{m} prefill tok/s" for m in side) + " | "
              + " | ".join(f"{m} peak GiB" for m in side) + " |\n")
    header += "|" + "---|" * (3 + len(args.methods) + 2 * len(side)) + "\n"
    body = "".join(
        f"| {c} | {b} | " + " | ".join(cell(res[m], "decode") for m in args.methods) + f" | {ratio(res)} | "
        + " | ".join(cell(res[m], "prefill") for m in side) + " | "
        + " | ".join("OOM" if res[m].get("oom") else f"{res[m]['mem']:.1f}" for m in side) + " |\n"
        for c, b, res in rows
    )
    note = ", ".join(f"{m} {p / 1e6:.0f}M params" for m, p in params.items() if m != "tnl_eager")
    table = header + body + (f"\n{note}; bf16, random weights, greedy, {args.new_tokens} new tokens per row. Decode "
                             "tokens/s = generated tokens / decoding time (prefill excluded).\n")
    print(table)
    if args.write_md:
        write_md(args.md_key, table)


def write_md(key: str, table: str) -> None:
    """Put the table, with its command, device, versions and date, in its section of docs/benchmarks.md."""
    from benchmarks.markdown import rewrite_section, stamp

    body = f"{stamp('benchmarks.bench_generate', ('transformers', 'triton'))}\n\n{table}"
    rewrite_section(key, body, chapter="Generation throughput")
    print(f"rewrote <!-- {key} --> in docs/benchmarks.md")


if __name__ == "__main__":
    main()
