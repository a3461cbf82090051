"""Text -> tokenizer -> cached token arrays: the steps train.py and scripts/prepare_data.py share."""

from __future__ import annotations

from typing import Any

from .sources import describe_source, load_documents, source_key
from .token_cache import TokenArray, build_token_array
from .tokenizer import load_tokenizer


def text_key(data_cfg: Any, split: str) -> tuple:
    """What identifies a split's documents (source files or hub fingerprint, and how they are read)."""
    return (source_key(data_cfg, split), data_cfg.kind, data_cfg.get("detokenize", False), data_cfg.get("sample_by"),
            data_cfg.get("text_column"))


def prepare_tokenizer(cfg: Any, log=print):
    """The tokenizer of `cfg.tokenizer`; a BPE is trained on `cfg.data`'s training split on a cache miss."""
    return load_tokenizer(cfg.tokenizer, lambda: load_documents(cfg.data, "train"), cfg.data.cache_dir,
                          lambda: text_key(cfg.data, "train"), log=log)


def prepare_split(data_cfg: Any, tokenizer, split: str, log=print) -> TokenArray:
    """Tokens of one split, from the cache when present."""
    source = describe_source(data_cfg, split)
    log(f"data: {source}" + (" (detokenized)" if data_cfg.get("detokenize") else ""))
    return build_token_array(lambda: load_documents(data_cfg, split), tokenizer, data_cfg.cache_dir,
                             text_key(data_cfg, split), num_proc=data_cfg.get("num_proc", 2), log=log)
