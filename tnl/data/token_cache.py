"""Flat token arrays on disk: tokenize once with `datasets.map`, memory-map on every later run.

Each split becomes `tokens.bin` (uint16 when the vocab fits, else uint32, one EOS after every
document), `doc_starts.npy` (offset of each document) and `meta.json`, in a folder named by a
fingerprint of source, tokenizer and settings. Folders are written under a temporary name and renamed
into place (`tnl.atomic.cache_folder`), so an interrupted build never leaves a cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tnl.atomic import cache_folder

from .errors import DataError
from .tokenizer import fingerprint, text_batches


@dataclass
class TokenArray:
    tokens: np.ndarray  # memory-mapped, 1-D
    doc_starts: np.ndarray  # int64, sorted, first is 0
    path: Path

    def __len__(self) -> int:
        return len(self.tokens)


# Encoded with the tokenizer into its hash: catches wrapper settings (prefix spaces, lower-casing) that a slow
# tokenizer keeps outside its vocabulary.
_PROBE = " Hello, World! naïve 数据 1,234 @-@ don't  \n\tEnd"


def tokenizer_hash(tokenizer) -> str:
    """Hash of everything about a tokenizer that decides a split's tokens: its full definition (vocab, merges,
    normalizer, pre-tokenizer, added tokens; the sorted vocab for a slow tokenizer), its class, which id is the EOS
    appended after each document, and its encoding of a probe text. Where it was loaded from is not part of it: the
    same tokenizer from another folder (a checkpoint's, with `train.init_from`) shares the cache."""
    if hasattr(tokenizer, "backend_tokenizer"):
        definition = tokenizer.backend_tokenizer.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    probe = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    blob = json.dumps([type(tokenizer).__name__, definition, tokenizer.eos_token_id, len(tokenizer), probe])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _open(folder: Path) -> TokenArray:
    meta = json.loads((folder / "meta.json").read_text())
    tokens = np.memmap(folder / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    if len(tokens) != meta["num_tokens"]:
        raise DataError(f"token cache {folder} is truncated; delete that folder to rebuild it")
    return TokenArray(tokens, np.load(folder / "doc_starts.npy"), folder)


def build_token_array(docs_fn: Callable, tokenizer, cache_dir: str | os.PathLike, source_key: Any,
                      num_proc: int = 2, log=print) -> TokenArray:
    """Tokenize the documents of `docs_fn()` (a datasets.Dataset or IterableDataset with column "text") into a
    cached flat token array. `source_key` identifies the text (files and their sizes/mtimes, or a hub dataset
    fingerprint), so a cache hit needs no reading or tokenizing at all."""
    key = fingerprint("tokens-v2", source_key, tokenizer_hash(tokenizer))
    folder = Path(cache_dir).expanduser() / "tokens" / key
    if (folder / "meta.json").exists():
        return _open(folder)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; choose one that defines eos_token")
    docs = docs_fn()

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [x + [eos] for x in ids]}

    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    lengths: list[int] = []
    with cache_folder(folder) as tmp:  # another process that built the same key first wins
        with open(tmp / "tokens.bin", "wb") as f:
            for chunk in _encoded_chunks(docs, encode, num_proc):
                lengths.extend(len(x) for x in chunk)
                f.write(np.fromiter((t for x in chunk for t in x), dtype=dtype).tobytes())
        if not lengths:
            raise DataError(f"no documents in {source_key}; check data.files and data.text_column")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        np.save(tmp / "doc_starts.npy", starts)
        num_tokens = int(sum(lengths))
        meta = {"num_tokens": num_tokens, "num_docs": len(lengths), "dtype": np.dtype(dtype).name,
                "source": str(source_key), "vocab_size": vocab}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"token cache: {num_tokens:,} tokens in {len(lengths):,} documents -> {folder}")
    return _open(folder)


def _encoded_chunks(docs, encode: Callable, num_proc: int) -> Iterator[list[list[int]]]:
    """Token id lists in chunks: `datasets.map` over processes, or one pass for a streamed corpus."""
    import datasets

    if isinstance(docs, datasets.IterableDataset):  # larger than memory: never materialised
        for batch in text_batches(docs, 1024):
            yield encode({"text": batch})["ids"]
        return
    nproc = max(1, min(num_proc, len(docs) // 64)) if num_proc else 1
    encoded = docs.map(encode, batched=True, batch_size=256, num_proc=nproc if nproc > 1 else None,
                       remove_columns=docs.column_names, desc="tokenize", load_from_cache_file=False)
    for i in range(0, len(encoded), 1024):
        yield encoded[i : i + 1024]["ids"]
