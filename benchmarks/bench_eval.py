"""Evaluation throughput (tokens/s) per mode and batch size, next to training steps (forward, backward, AdamW) of
the same model at the largest batch size and eval.max_length tokens per row, with each row's eval / train ratio:

    python -m benchmarks.bench_eval                                  # random-init 385M-size TNL, WT-103 validation
    python -m benchmarks.bench_eval model_path=RUN/checkpoints/step_N bench.batch_sizes=[1,8,32]
    python -m benchmarks.bench_eval bench.preset=tiny bench.num_docs=4 eval.device=cpu   # a quick CPU check
    # the quickstart's final evaluation (window 256, batch 8) against its training, on the CPU:
    python -m benchmarks.bench_eval bench.preset=quickstart bench.vocab_size=4096 bench.num_docs=8 \\
        eval.max_length=256 'bench.batch_sizes=[8]' 'bench.modes=[window]' eval.device=cpu +bench.train_steps=5

Options: configs/evaluate.yaml (eval.*, data, and its bench.* section); `+bench.train_steps=N` sets the timed
training steps (default 3; 0 skips the training reference).

Without Hydra (e.g. on a GPU machine without hydra/omegaconf/datasets), `--plain` takes flags instead:

    python -m benchmarks.bench_eval --plain [--preset 385m] [--text wikitext-2-raw/wiki.valid.raw] [--num-docs N]
        [--vocab-size 32000] [--modes window stream] [--batch-sizes 1 8 32] [--max-length 1024] [--train-steps 3]
        [--device auto] [--dtype auto] [--model-path EXPORT] [--output rows.json]
"""

from __future__ import annotations

import sys
from typing import Any


def _task(cfg: Any) -> None:
    from tnl.commands import run_or_exit
    from tnl.eval.bench import bench_main

    run_or_exit(bench_main, cfg)


def plain(argv: list[str]) -> list[dict[str, Any]]:
    """The benchmark from flags: WikiText articles of a raw file (--text) or synthetic ones, a BPE trained on them
    and a random-init preset, or an exported model (--model-path)."""
    import argparse
    from pathlib import Path

    from tnl.eval.bench import PRESETS, bpe_tokenizer, random_model, run_bench, synthetic_documents
    from tnl.eval.run import resolve_device, resolve_dtype, write_json

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_eval --plain")
    ap.add_argument("--preset", default="385m", choices=list(PRESETS))
    ap.add_argument("--model-path", default=None, help="an exported model folder instead of a random preset")
    ap.add_argument("--text", default=None, help="a raw WikiText file (articles split at their titles)")
    ap.add_argument("--num-docs", type=int, default=None, help="first N articles (synthetic: default 16)")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--modes", nargs="+", default=["window", "stream"], choices=["window", "sliding", "stream"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--output", default=None, help="JSON with one row per (mode, batch size)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device, key="--device")
    dtype = resolve_dtype(args.dtype, device, key="--dtype")
    if args.text:
        from tnl.data import split_articles

        with open(Path(args.text).expanduser(), encoding="utf-8") as f:
            documents = [doc for doc in split_articles(f) if doc.strip()]
    else:
        documents = synthetic_documents(args.num_docs or 16)
    documents = documents[: args.num_docs] if args.num_docs else documents
    print(f"data: {len(documents)} documents ({args.text or 'synthetic'})")
    if args.model_path:
        from tnl.checkpoint import load_pretrained

        loaded = load_pretrained(args.model_path)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        tokenizer = bpe_tokenizer(documents, args.vocab_size)
        model = random_model(args.preset, len(tokenizer))
    rows = run_bench(model, tokenizer, documents, modes=args.modes, batch_sizes=args.batch_sizes,
                     max_length=args.max_length, device=device, dtype=dtype, train_steps=args.train_steps)
    if args.output:
        print(f"results: {write_json({'rows': rows}, args.output)}")
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--plain"]:
        from tnl.commands import run_or_exit

        run_or_exit(plain, sys.argv[2:])
        return
    from tnl.commands import hydra_entry

    hydra_entry(_task, "evaluate")


if __name__ == "__main__":
    main()
