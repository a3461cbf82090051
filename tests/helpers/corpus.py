"""Small random-word corpora written as jsonl, so training tests need no downloaded data."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_corpus(folder: Path, n_words: int, docs: dict[str, int], doc_len: int, seed: int = 0) -> Path:
    """Write `folder/<split>.jsonl` with `docs[split]` documents of `doc_len` words drawn from `n_words` words
    (plus "the", "a", "." and, from 60 words up, "of")."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(n_words)] + ["the", "a"] + (["of"] if n_words >= 60 else []) + ["."]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in docs.items():
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(doc_len))}) + "\n")
    return folder
