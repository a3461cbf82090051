"""Text -> tokenizer -> cached token arrays: the steps `tnl train` and `tnl prepare-data` share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tnl import settings

from .sources import data_root, describe_source, load_documents, source_key
from .token_cache import TokenArray, build_token_array
from .tokenizer import load_tokenizer
from .wikitext import PAGE_FORMAT


def text_key(data_cfg: Any, split: str) -> tuple:
    """What identifies a split's documents (source files or hub fingerprint, and how they are read). WikiText keys
    also name the page format, so caches built from pages cut another way are not reused."""
    key = (source_key(data_cfg, split), data_cfg.kind, data_cfg.get("detokenize", False), data_cfg.get("sample_by"),
           data_cfg.get("text_column"))
    return (*key, PAGE_FORMAT) if data_cfg.kind == "wikitext" else key


def cache_root(data_cfg: Any) -> Path:
    """`data.cache_dir`, else tnl's cache folder (`tnl.settings.cache_dir()`: $TNL_CACHE_DIR or ~/.cache/tnl)."""
    if data_cfg.get("cache_dir"):
        return Path(str(data_cfg.cache_dir)).expanduser()
    return settings.cache_dir()


def resolve_paths(data_cfg: Any) -> None:
    """Fill in `data.path` and `data.cache_dir` with the folders they resolve to, so a saved config records them."""
    from omegaconf import open_dict

    with open_dict(data_cfg):
        data_cfg.path = data_root(data_cfg)
        data_cfg.cache_dir = str(cache_root(data_cfg))


def prepare_tokenizer(cfg: Any, log=print):
    """The tokenizer of `cfg.tokenizer`; a BPE is trained on `cfg.data`'s training split on a cache miss."""
    return load_tokenizer(cfg.tokenizer, lambda: load_documents(cfg.data, "train"), cache_root(cfg.data),
                          lambda: text_key(cfg.data, "train"), log=log)


def prepare_split(data_cfg: Any, tokenizer, split: str, log=print) -> TokenArray:
    """Tokens of one split, from the cache when present."""
    source = describe_source(data_cfg, split)
    log(f"data: {source}" + (" (detokenized)" if data_cfg.get("detokenize") else ""))
    return build_token_array(lambda: load_documents(data_cfg, split), tokenizer, cache_root(data_cfg),
                             text_key(data_cfg, split), num_proc=data_cfg.get("num_proc", 2), log=log)
