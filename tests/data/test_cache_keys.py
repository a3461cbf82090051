"""The token cache is keyed by everything that decides the tokens: flipping any one such setting builds a new cache
(with different tokens), while settings that leave the tokens alone reuse it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tnl.data import prepare_split, prepare_tokenizer

ROOT = Path(__file__).resolve().parents[2]
WIKI = (" \n = Alpha Beta = \n \n The 1 @,@ 900 war @-@ time song , a \" big \" hit ( 3 @.@ 5 ) . \n \n"
        " = = Later = = \n \n It ran ; then stopped : the king 's men . \n \n"
        " = Gamma = \n \n Small river city , 2 @-@ 3 km long . \n")


def _hf_tokenizer(folder: Path, eos: str = "<|endoftext|>") -> str:
    """A byte-level BPE saved as an HF folder; two special tokens, `eos` is the one appended after documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|other|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([WIKI * 3, "doc body text head tail line " * 20], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache_keys")
    data = root / "data"
    data.mkdir()
    (data / "a2.jsonl").write_text("".join(json.dumps({"text": f"old {i} text " * 5}) + "\n" for i in range(12)))
    rows = [{"text": f"doc {i} text " * 5, "body": f"body {i} line " * 4} for i in range(12)]
    (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "b.jsonl").write_text("".join(json.dumps({"text": f"other {i} head " * 6}) + "\n" for i in range(12)))
    (data / "lines.txt").write_text("".join(f"line {i} of the text file\n" for i in range(30)))
    (data / "wiki.txt").write_text(WIKI)
    _hf_tokenizer(root / "tok")
    return root


def _cfg(corpus: Path, kind: str):
    name = "wikitext103" if kind == "wikitext" else "text"
    data = OmegaConf.load(ROOT / f"configs/data/{name}.yaml")
    data.path, data.cache_dir, data.num_proc = str(corpus / "data"), str(corpus / "cache"), 1
    files = {"wikitext": "wiki.txt", "lines": "lines.txt", "rewritten": "a2.jsonl"}.get(kind, "a.jsonl")
    data.files = {"train": [files], "validation": [files]}
    tok = {"kind": "hf", "name": str(corpus / "tok"), "vocab_size": None, "min_frequency": 2}
    if kind == "bpe":
        tok = {"kind": "bpe", "name": None, "vocab_size": 262, "min_frequency": 2}
    return OmegaConf.create({"data": data, "tokenizer": tok})


def _build(cfg, split: str = "train"):
    messages: list[str] = []
    tok = prepare_tokenizer(cfg, log=messages.append)
    arr = prepare_split(cfg.data, tok, split, log=messages.append)
    return arr, any(m.startswith("token cache:") for m in messages)


def _rewrite(corpus: Path, cfg) -> None:
    """The same file name with new content (a user who regenerates the corpus in place)."""
    (corpus / "data" / "a2.jsonl").write_text("".join(json.dumps({"text": f"new {i} tail " * 6}) + "\n"
                                                      for i in range(12)))


def _other_eos(corpus: Path, cfg) -> None:
    """Same vocabulary and merges; only which special token is the EOS differs."""
    cfg.tokenizer.name = _hf_tokenizer(corpus / "tok-eos", eos="<|other|>")


def _held_out(corpus: Path, cfg) -> None:
    cfg.data.files.validation, cfg.data.validation_fraction = None, 0.3


# (case, config kind, change, split): settings that change the tokens of a split
CHANGES = [
    ("detokenize", "wikitext", lambda c, cfg: setattr(cfg.data, "detokenize", False), "train"),
    ("text_column", "jsonl", lambda c, cfg: setattr(cfg.data, "text_column", "body"), "train"),
    ("files", "jsonl", lambda c, cfg: setattr(cfg.data.files, "train", ["b.jsonl"]), "train"),
    ("file_content", "rewritten", _rewrite, "train"),
    ("sample_by", "lines", lambda c, cfg: setattr(cfg.data, "sample_by", "line"), "train"),
    ("validation_fraction", "lines", _held_out, "validation"),
    ("bpe_vocab_size", "bpe", lambda c, cfg: setattr(cfg.tokenizer, "vocab_size", 270), "train"),
    ("bpe_min_frequency", "bpe", lambda c, cfg: setattr(cfg.tokenizer, "min_frequency", 1000), "train"),
    ("tokenizer_name", "jsonl", lambda c, cfg: cfg.tokenizer.update({"kind": "bpe", "name": None,
                                                                      "vocab_size": 262}), "train"),
    ("tokenizer_eos", "jsonl", _other_eos, "train"),
]


@pytest.mark.parametrize("case,kind,change,split", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_setting_that_changes_tokens_rebuilds_the_cache(corpus, case, kind, change, split):
    cfg = _cfg(corpus, kind)
    cfg.data.cache_dir = str(corpus / "cache" / case)  # a cache of its own: a hit can only be on `before`
    before, _ = _build(cfg, split)
    change(corpus, cfg)
    after, rebuilt = _build(cfg, split)
    assert rebuilt and after.path != before.path
    assert not np.array_equal(np.asarray(before.tokens), np.asarray(after.tokens))


def test_the_same_tokenizer_from_another_folder_shares_the_cache(corpus):
    """What a tokenizer is, not where it was loaded from (a checkpoint's copy with train.init_from) keys the cache."""
    cfg = _cfg(corpus, "jsonl")
    before, _ = _build(cfg)
    shutil.copytree(corpus / "tok", corpus / "tok-copy")
    cfg.tokenizer.name = str(corpus / "tok-copy")
    after, rebuilt = _build(cfg)
    assert not rebuilt and after.path == before.path


def test_packing_settings_reuse_the_cache_with_the_same_tokens(corpus, tmp_path):
    """document_aware only changes how windows are cut from the cached tokens and document starts (both are always
    stored), so flipping it reuses the cache; a fresh build with it flipped gives the same bytes."""
    cfg = _cfg(corpus, "jsonl")
    before, _ = _build(cfg)
    cfg.data.document_aware = not cfg.data.document_aware
    again, rebuilt = _build(cfg)
    assert not rebuilt and again.path == before.path
    cfg.data.cache_dir = str(tmp_path)
    fresh, rebuilt = _build(cfg)
    assert rebuilt and np.array_equal(np.asarray(fresh.tokens), np.asarray(before.tokens))
    assert np.array_equal(fresh.doc_starts, before.doc_starts)
