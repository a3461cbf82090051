"""Data pipeline speed: tokenizing WikiText-2's train split, a cache hit, and loader throughput.

python -m benchmarks.bench_data [--data-dir DIR] [--write-md]
Targets: tokenizing WT-2 train (10.8 MB) < 30 s on 2 cores; cache hit < 1 s; the loader
delivers batches faster than a GPU step consumes them (reported as batches/s at 8 x 2048 tokens).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from tnl import settings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from tnl.data import PackedWindows, ResumableSampler, collate, prepare_split, prepare_tokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=settings.data_dir() or str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--write-md", action="store_true", help="rewrite the table in docs/benchmarks.md")
    args = parser.parse_args()
    quiet = lambda *_: None  # noqa: E731
    with tempfile.TemporaryDirectory() as cache:
        data = OmegaConf.load(ROOT / "configs/data/wikitext2.yaml")
        base = OmegaConf.load(ROOT / "configs/data/wikitext103.yaml")
        data = OmegaConf.merge(base, {k: v for k, v in data.items() if k != "defaults"})
        data.path, data.cache_dir = args.data_dir, cache
        cfg = OmegaConf.create({"data": data, "tokenizer": OmegaConf.load(ROOT / "configs/tokenizer/bpe.yaml")})
        t0 = time.perf_counter()
        tok = prepare_tokenizer(cfg, log=quiet)
        t_bpe = time.perf_counter() - t0
        t0 = time.perf_counter()
        arr = prepare_split(cfg.data, tok, "train", log=quiet)
        t_tokenize = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare_split(cfg.data, tok, "train", log=quiet)
        t_hit = time.perf_counter() - t0
        windows = PackedWindows(arr, 2048)
        sampler = ResumableSampler(len(windows), seed=0)
        import torch

        loader = torch.utils.data.DataLoader(windows, batch_size=8, sampler=sampler, collate_fn=collate, num_workers=1)
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        n = 200
        for _ in range(n):
            next(it)
        bps = n / (time.perf_counter() - t0)
    size_mb = os.path.getsize(Path(args.data_dir) / "wikitext-2/wiki.train.tokens.docshuffled") / 1e6
    rows = [
        ("train BPE (8,192) on WT-2 train", f"{t_bpe:.1f} s", "-"),
        (f"tokenize WT-2 train ({size_mb:.1f} MB, {len(arr.tokens):,} tokens)", f"{t_tokenize:.1f} s", "30 s"),
        ("token cache hit", f"{t_hit:.3f} s", "1 s"),
        ("loader, batches of 8 x 2048 tokens", f"{bps:,.0f} batches/s", "-"),
    ]
    table = "| measurement | result | target |\n| --- | ---: | ---: |\n" + "".join(
        f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    print(table)
    if args.write_md:
        import torch

        from benchmarks.markdown import current_section, rewrite_section, today

        device = f"{platform.machine()}, {os.cpu_count()} cores"
        notes = [ln for ln in (current_section("bench_data") or "").splitlines() if ln.startswith("- ")]
        body = (f"`python -m benchmarks.bench_data` · {device} · torch {torch.__version__} · {today()}\n\n{table}"
                + "".join(f"\n{n}" for n in notes) + "\n")
        rewrite_section("bench_data", body, chapter="Data pipeline")
        print("rewrote <!-- bench_data --> in docs/benchmarks.md")


if __name__ == "__main__":
    main()
