"""Data: sources (hub or local files), tokenizers, the on-disk token cache, packing and sampling."""

from .errors import DataError
from .packing import PackedWindows, collate
from .pipeline import cache_root, prepare_split, prepare_tokenizer, resolve_paths
from .sampler import ResumableSampler
from .sources import configured_splits, data_root, describe_source, load_documents
from .token_cache import TokenArray, build_token_array
from .wikitext import detokenize, split_articles

__all__ = [
    "DataError",
    "PackedWindows",
    "ResumableSampler",
    "TokenArray",
    "build_token_array",
    "cache_root",
    "collate",
    "configured_splits",
    "data_root",
    "describe_source",
    "detokenize",
    "load_documents",
    "prepare_split",
    "prepare_tokenizer",
    "resolve_paths",
    "split_articles",
]
