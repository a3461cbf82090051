"""Where text comes from: the Hugging Face hub, or local files named in config (`data.path` + `data.files`).

`data.path` (the folder `data.files` are relative to) defaults to `$TNL_DATA_DIR` for WikiText configs, whose file
names follow the layout of the shared local copy; unset, WikiText comes from the hub.
`data.path` may also be one text file: it is the train split (files of `data.files` are then relative to its folder).
Local text without a validation entry in `data.files` holds out the first `data.validation_fraction` of the training
documents as validation (as Hugging Face's run_clm does); the rest is the train split.

Every source ends as a `datasets.Dataset` (or `IterableDataset` when streaming) with one document per
row in column "text"; `describe_source` says in one line which files or hub dataset a run used.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from tnl import settings

from .errors import DataError
from .wikitext import detokenize, split_articles

_LOADERS = {".txt": "text", ".raw": "text", ".tokens": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def data_root(cfg: Any) -> str | None:
    """`data.path`, else `$TNL_DATA_DIR` for WikiText configs (see the module docstring); None: no local folder."""
    if cfg.get("path"):
        return str(cfg.path)
    return settings.data_dir() if cfg.get("kind") == "wikitext" else None


def _split_files(cfg: Any, split: str) -> list[str]:
    files = (cfg.get("files") or {}).get(split)
    root = Path(os.path.expanduser(data_root(cfg))) if data_root(cfg) else None
    if root is not None and not root.exists():
        raise DataError(f"data.path {root} not found; give a folder of data files or one text file "
                        "(WikiText: set TNL_DATA_DIR or data.path)")
    if root is not None and root.is_file():  # one file: the train split
        if split == "train" and not files:
            files = [root.name]
        root = root.parent
    if not files:
        also = " or set data.validation_fraction > 0 to hold out train text" if split == "validation" else ""
        raise DataError(f"data.files has no entry for split '{split}'; add data.files.{split}=[...] to the config"
                        + also)
    out: list[str] = []
    for name in [files] if isinstance(files, str) else list(files):
        pattern = str(root / name) if root is not None and not os.path.isabs(name) else os.path.expanduser(name)
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise DataError(f"data file not found: {pattern}; check data.path (TNL_DATA_DIR) and data.files.{split}")
        for m in matches:
            if os.path.getsize(m) == 0:
                raise DataError(f"data file is empty: {m}; point data.files.{split} at a file with text")
        out.extend(matches)
    return out


def _use_local(cfg: Any) -> bool:
    return bool(data_root(cfg)) or cfg.kind == "text" and not cfg.get("hub_path")


def held_out_fraction(cfg: Any) -> float:
    """The share of local training documents held out as validation: `data.validation_fraction` where local text
    names no validation files, else 0."""
    if cfg.kind != "text" or not _use_local(cfg) or (cfg.get("files") or {}).get("validation"):
        return 0.0
    return float(cfg.get("validation_fraction") or 0.0)


def configured_splits(cfg: Any) -> list[str]:
    """The splits a data config provides: train and validation (which training needs; validation may be held out of
    the train text), and test where it is named in `data.files` or is WikiText's on the hub."""
    has_test = bool((cfg.get("files") or {}).get("test")) or not _use_local(cfg) and cfg.kind == "wikitext"
    return ["train", "validation"] + (["test"] if has_test else [])


def describe_source(cfg: Any, split: str) -> str:
    """One line naming exactly what a split is read from."""
    fraction = held_out_fraction(cfg) if split in ("train", "validation") else 0.0
    if fraction:
        part = "the first" if split == "validation" else "all but the first"
        return f"{split}: {part} {fraction:.0%} of the train documents of local files " + ", ".join(
            _split_files(cfg, "train"))
    if _use_local(cfg):
        return f"{split}: local files " + ", ".join(_split_files(cfg, split))
    return f"{split}: hub dataset {cfg.hub_path}" + (f" ({cfg.hub_name})" if cfg.get("hub_name") else "")


def source_key(cfg: Any, split: str) -> list:
    """What identifies a split's text without reading it: each local file's path, size and mtime, or the
    hub dataset's own fingerprint (datasets caches hub downloads)."""
    fraction = held_out_fraction(cfg) if split in ("train", "validation") else 0.0
    if fraction:  # both splits are cut from the training files
        files = _split_files(cfg, "train")
        return [f"{split} held out", fraction, *[(f, os.path.getsize(f), os.path.getmtime(f)) for f in files]]
    if _use_local(cfg):
        return [(f, os.path.getsize(f), os.path.getmtime(f)) for f in _split_files(cfg, split)]
    ds = _load_hub(cfg, split, streaming=False)
    return [cfg.hub_path, cfg.get("hub_name"), split, ds._fingerprint]


def _load_local(cfg: Any, split: str, streaming: bool):
    import datasets

    files = _split_files(cfg, split)
    exts = {Path(f).suffix.lower() for f in files}
    loaders = {_LOADERS.get(e, "text") for e in exts}
    if len(loaders) != 1:
        raise DataError(f"data.files.{split} mixes file types {sorted(exts)}; use one type per split")
    loader = loaders.pop()
    kwargs: dict[str, Any] = {}
    if loader == "text":
        kwargs = {"keep_linebreaks": True, "sample_by": "line" if cfg.kind == "wikitext" else cfg.sample_by}
    try:
        ds = datasets.load_dataset(loader, data_files={split: files}, split=split, streaming=streaming, **kwargs)
    except Exception as err:  # datasets wraps reader errors; find the cause the user can fix
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise DataError(f"a file of split '{split}' is not valid UTF-8 ({cause.reason} at byte {cause.start}); "
                            "re-encode it as UTF-8") from None
        raise DataError(f"cannot read {files} as {loader} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                        "check the file format and data.files") from None
    return ds


def _load_hub(cfg: Any, split: str, streaming: bool):
    import datasets

    try:
        return datasets.load_dataset(cfg.hub_path, cfg.get("hub_name"), split=split, streaming=streaming)
    except Exception as err:  # network, auth or a wrong name all end here
        raise DataError(
            f"cannot load '{cfg.hub_path}' from the Hugging Face hub ({type(err).__name__}); "
            "set TNL_DATA_DIR (or data.path) to a local copy, e.g. make sets it to ../shared/data"
        ) from None


def _hold_out(ds, fraction: float, split: str):
    """The first `fraction` of the documents (split "validation") or the rest ("train"). A single document (a text
    file read with sample_by=document) is cut at a line boundary instead."""
    import datasets

    texts = ds["text"]
    if len(texts) == 1:
        lines = texts[0].splitlines(keepends=True)
        if len(lines) < 2:
            raise DataError("the train file has one line, too little to hold out validation text; "
                            "set data.files.validation")
        cut = min(max(1, round(len(lines) * fraction)), len(lines) - 1)
        return datasets.Dataset.from_dict({"text": ["".join(lines[:cut]) if split == "validation"
                                                    else "".join(lines[cut:])]})
    cut = min(max(1, round(len(texts) * fraction)), len(texts) - 1)
    return ds.select(range(cut) if split == "validation" else range(cut, len(texts)))


def load_documents(cfg: Any, split: str, detokenized: bool | None = None):
    """A dataset of documents (column "text") for `split` of the configured source.

    WikiText rows are grouped into articles; with `data.detokenize` (or `detokenized=True`) the
    lm-eval detokenizer is applied, so training sees text in the form evaluation scores.
    """
    import datasets

    streaming = bool(cfg.get("streaming", False))
    fraction = held_out_fraction(cfg) if split in ("train", "validation") else 0.0
    if fraction and streaming:
        raise DataError("a held-out validation fraction needs the whole train split; set data.files.validation "
                        "or data.streaming=false")
    if fraction:
        ds = _load_local(cfg, "train", streaming)
    else:
        ds = _load_local(cfg, split, streaming) if _use_local(cfg) else _load_hub(cfg, split, streaming)
    column = cfg.get("text_column", "text")
    if column not in (ds.column_names or [column]):
        raise DataError(f"column '{column}' not in split '{split}' (columns: {ds.column_names}); set data.text_column")
    if column != "text":  # the chosen column becomes "text", whatever other columns (a "text" one too) the rows hold
        ds = ds.select_columns([column]).rename_column(column, "text")
    if fraction:
        ds = _hold_out(ds, fraction, split)
    if cfg.kind == "wikitext":
        if streaming:
            raise DataError("data.streaming is for large text corpora; WikiText is small, set data.streaming=false")
        docs = split_articles(ds["text"])  # hub and local rows are lines; an article is one document
        if cfg.get("detokenize", False) if detokenized is None else detokenized:
            docs = [detokenize(d) for d in docs]
        ds = datasets.Dataset.from_dict({"text": docs})
    return ds
