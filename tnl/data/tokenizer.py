"""Tokenizers: any Hugging Face tokenizer by name or path, or a byte-level BPE trained here.

The BPE is trained with `tokenizers` on the training documents, cached under a fingerprint of the
data and settings, and saved in HF format so it ships with exports.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tnl.atomic import cache_folder

from .errors import DataError

SPECIAL = "<|endoftext|>"


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (config values, content hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def text_batches(docs, size: int = 256):
    """Lists of document texts from a datasets.Dataset (sliced) or a streamed IterableDataset."""
    if hasattr(docs, "__len__"):
        for i in range(0, len(docs), size):
            yield docs[i : i + size]["text"]
        return
    batch: list[str] = []
    for row in docs:
        batch.append(row["text"])
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_bpe(docs, vocab_size: int, min_frequency: int = 2):
    """Byte-level BPE (GPT-2 style pre-tokenization) with one special token for EOS/BOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    tok.train_from_iterator(text_batches(docs), trainer=trainer, length=len(docs) if hasattr(docs, "__len__") else None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL, unk_token=None,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(cfg: Any, train_docs_fn: Callable, cache_dir: str | os.PathLike, data_key_fn: Callable,
                   log=print):
    """The configured tokenizer. A BPE is cached under `data_key_fn()` (what identifies the training text without
    reading it) and the settings; `train_docs_fn()` gives the training documents, read only on a cache miss."""
    from transformers import AutoTokenizer

    if cfg.kind == "hf":
        if not cfg.get("name"):
            raise DataError("tokenizer.kind=hf needs tokenizer.name=<hub name or local folder>")
        try:
            tok = AutoTokenizer.from_pretrained(cfg.name)
        except Exception as err:
            raise DataError(
                f"tokenizer '{cfg.name}' cannot be loaded ({type(err).__name__}); give a local folder with "
                "tokenizer.json or use tokenizer=bpe to train one"
            ) from None
        if tok.eos_token_id is None:
            raise DataError(f"tokenizer '{cfg.name}' has no EOS token; choose one that defines eos_token")
        return tok
    if cfg.kind != "bpe":
        raise DataError(f"unknown tokenizer.kind '{cfg.kind}'; use 'bpe' or 'hf'")
    key = fingerprint("bpe-v2", data_key_fn(), cfg.vocab_size, cfg.get("min_frequency", 2))
    folder = Path(cache_dir).expanduser() / "tokenizers" / key
    if (folder / "tokenizer.json").exists():
        log(f"tokenizer: cached byte-level BPE ({cfg.vocab_size} tokens) at {folder}")
        return AutoTokenizer.from_pretrained(str(folder))
    log(f"tokenizer: training byte-level BPE with {cfg.vocab_size} tokens on the training split")
    tok = train_bpe(train_docs_fn(), cfg.vocab_size, cfg.get("min_frequency", 2))
    with cache_folder(folder) as tmp:  # another process that finished first wins
        tok.save_pretrained(str(tmp))
    log(f"tokenizer: saved to {folder}")
    return AutoTokenizer.from_pretrained(str(folder))
