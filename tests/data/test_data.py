import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tnl.data import (
    DataError,
    PackedWindows,
    ResumableSampler,
    TokenArray,
    build_token_array,
    collate,
    detokenize,
    load_documents,
    prepare_split,
    prepare_tokenizer,
    split_articles,
)
from tnl.data.sources import source_key
from tnl.data.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2]


def wikitext_cfg(data_dir, tmp_path, **over):
    data = OmegaConf.load(ROOT / "configs/data/wikitext103.yaml")
    data.path = str(data_dir)
    data.cache_dir = str(tmp_path / "cache")
    for k, v in over.items():
        OmegaConf.update(data, k, v)
    tok = OmegaConf.create({"kind": "bpe", "name": None, "vocab_size": 600, "min_frequency": 2})
    return OmegaConf.create({"data": data, "tokenizer": tok})


def test_split_articles_groups_by_title_not_section():
    """A page runs from its title to the line before the next title, less that line's newline; the last page keeps
    the final newline; hub rows ("" for a blank line) give the same pages as the raw lines."""
    lines = [" \n", " = A = \n", " \n", " = = Sec = = \n", " text a \n", " \n", " = B = \n", " text b \n"]
    pages = [" = A = \n \n = = Sec = = \n text a \n ", " = B = \n text b \n"]
    assert split_articles(lines) == pages
    assert split_articles([x if x.strip() else "" for x in lines]) == pages


def test_wikitext_valid_and_test_have_the_published_article_counts(data_dir, tmp_path):
    cfg = wikitext_cfg(data_dir, tmp_path)
    # lm-eval's document-level WikiText has 60 validation and 62 test articles
    assert len(load_documents(cfg.data, "validation")) == 60
    assert len(load_documents(cfg.data, "test")) == 62


def test_detokenize_undoes_wikitext_tokenization():
    text = ' = = Early life = = \n He was born in 1 @,@ 900 , a well @-@ known " quiet " year ( 3 @.@ 5 % ) . \n'
    assert detokenize(text) == ' == Early life ==\nHe was born in 1,900, a well-known "quiet" year (3.5 %).\n'
    assert detokenize("the king 's men") == "the king's men"


def test_bpe_is_deterministic_and_lossless(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "ünïcode", "数据", "x1", "="]
    docs = datasets.Dataset.from_dict({"text": [" ".join(rng.choice(words, 50)) + "\n" for _ in range(40)]})
    a, b = train_bpe(docs, 300), train_bpe(docs, 300)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()
    for text in docs["text"][:5] + ["unseen wörds ✓ 123"]:
        assert a.decode(a(text)["input_ids"]) == text


def test_token_cache_round_trips_and_is_reused(data_dir, tmp_path):
    cfg = wikitext_cfg(data_dir, tmp_path)
    tok = prepare_tokenizer(cfg, log=lambda *_: None)
    arr = prepare_split(cfg.data, tok, "validation", log=lambda *_: None)
    docs = load_documents(cfg.data, "validation", detokenized=True)["text"]
    assert len(arr.doc_starts) == len(docs)
    ends = list(arr.doc_starts[1:]) + [len(arr.tokens)]
    for i in (0, 17, len(docs) - 1):
        ids = arr.tokens[arr.doc_starts[i] : ends[i]].tolist()
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids[:-1]) == docs[i]
    messages = []
    again = prepare_split(cfg.data, tok, "validation", log=messages.append)
    assert again.path == arr.path and not any("token cache:" in m for m in messages)  # a hit builds nothing
    assert json.loads((arr.path / "meta.json").read_text())["num_tokens"] == len(arr.tokens)


def _array(n_tokens, doc_starts):
    tokens = np.arange(n_tokens, dtype=np.uint32) % 1000
    return TokenArray(tokens, np.array(doc_starts, dtype=np.int64), Path("."))


def test_packed_windows_cover_the_stream_with_shifted_labels():
    arr = _array(103, [0])
    ds = PackedWindows(arr, seq_len=10)
    assert len(ds) == 10
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["input_ids"], torch.arange(10 * i, 10 * i + 10))
        assert torch.equal(item["labels"], torch.arange(10 * i + 1, 10 * i + 11))


def test_document_aware_batches_carry_cu_seqlens_at_document_starts():
    starts = [0, 4, 13, 14, 25]
    ds = PackedWindows(_array(41, starts), seq_len=10, document_aware=True)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["input_ids"].shape == (1, 30)
    expected = [0] + [s for s in starts if 0 < s < 30] + [30]
    expected = sorted(set(expected) | {10, 20})
    assert batch["cu_seqlens"].tolist() == expected


def test_sampler_resume_repeats_nothing_and_skips_nothing():
    full = list(itertools.islice(iter(ResumableSampler(23, seed=7)), 60))  # crosses two epoch boundaries
    assert sorted(full[:23]) == list(range(23)) and full[:23] != full[23:46]  # a permutation, reshuffled
    first = ResumableSampler(23, seed=7)
    first.consumed = 31
    resumed = ResumableSampler(23, seed=7)
    resumed.load_state_dict(first.state_dict(), log=lambda *_: None)
    assert list(itertools.islice(iter(resumed), 29)) == full[31:]


def test_sampler_shards_are_disjoint_and_cover_an_epoch():
    shards = [list(itertools.islice(iter(ResumableSampler(20, seed=3, rank=r, world_size=4)), 5)) for r in range(4)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(20))


def test_sampler_world_size_change_keeps_global_position():
    old = ResumableSampler(40, seed=1, rank=0, world_size=2)
    old.consumed = 6  # 12 samples consumed over 2 ranks
    new = ResumableSampler(40, seed=1, rank=0, world_size=3)
    logs = []
    new.load_state_dict(old.state_dict(), log=logs.append)
    assert new.consumed == 4 and "world size changed 2 -> 3" in logs[0]


@pytest.mark.parametrize("problem", ["missing", "empty", "encoding", "column", "short"])
def test_bad_data_gets_one_line_error(problem, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    good = folder / "train.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"doc {i} " * 20}) for i in range(10)))
    data = OmegaConf.load(ROOT / "configs/data/text.yaml")
    data.path, data.cache_dir = str(folder), str(tmp_path / "cache")
    data.files = {"train": ["train.jsonl"], "validation": ["train.jsonl"]}
    if problem == "missing":
        data.files.train = ["nope.jsonl"]
    elif problem == "empty":
        (folder / "empty.txt").write_text("")
        data.files.train = ["empty.txt"]
    elif problem == "encoding":
        (folder / "bad.txt").write_bytes(b"caf\xe9 latin-1 text\n")
        data.files.train = ["bad.txt"]
    elif problem == "column":
        data.text_column = "body"
    with pytest.raises(DataError) as info:
        if problem == "short":
            docs = load_documents(data, "train")
            tok = train_bpe(docs, 280)
            arr = build_token_array(lambda: docs, tok, data.cache_dir, "t", num_proc=1, log=lambda *_: None)
            PackedWindows(arr, seq_len=len(arr.tokens) + 5)
        else:
            load_documents(data, "train")
    msg = str(info.value)
    assert "\n" not in msg and ";" in msg  # one line: the problem; the fix


def test_streaming_corpus_gives_the_same_tokens_as_in_memory(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for part in range(2):
        rows = [{"text": " ".join(rng.choice(["lin", "ear", "atten", "tion", "state"], 30))} for _ in range(30)]
        (folder / f"part{part}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    arrays, tokenizers = [], []
    for streaming in (False, True):
        data = OmegaConf.load(ROOT / "configs/data/text.yaml")
        data.path, data.cache_dir, data.streaming = str(folder), str(tmp_path / f"cache{streaming}"), streaming
        data.files = {"train": ["part*.jsonl"], "validation": ["part0.jsonl"]}
        cfg = OmegaConf.create({"data": data, "tokenizer": {"kind": "bpe", "vocab_size": 280, "min_frequency": 2}})
        tok = prepare_tokenizer(cfg, log=lambda *_: None)
        tokenizers.append(tok.backend_tokenizer.to_str())
        arrays.append(prepare_split(cfg.data, tok, "train", log=lambda *_: None))
    assert tokenizers[0] == tokenizers[1]
    assert np.array_equal(arrays[0].tokens, arrays[1].tokens)
    assert np.array_equal(arrays[0].doc_starts, arrays[1].doc_starts) and len(arrays[0].doc_starts) == 60


def test_unreachable_hub_without_local_copy_says_how_to_provide_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TNL_DATA_DIR", raising=False)
    cfg = wikitext_cfg(tmp_path, tmp_path)
    cfg.data.path = None
    with pytest.raises(DataError, match="set TNL_DATA_DIR") as info:
        load_documents(cfg.data, "validation")
    assert "\n" not in str(info.value)


def test_missing_hf_tokenizer_is_a_one_line_error(tmp_path):
    cfg = OmegaConf.create({"data": {"cache_dir": str(tmp_path)},
                            "tokenizer": {"kind": "hf", "name": str(tmp_path / "no-such-tokenizer")}})
    with pytest.raises(DataError, match="cannot be loaded") as info:
        prepare_tokenizer(cfg, log=lambda *_: None)
    assert "\n" not in str(info.value)


def test_data_and_cache_folders_resolve_through_the_settings(tmp_path, monkeypatch):
    """data.path / data.cache_dir null: $TNL_DATA_DIR (WikiText configs only) and $TNL_CACHE_DIR; a value wins;
    resolve_paths writes what was resolved into the config (a run's config.yaml records it)."""
    from tnl.data import cache_root, data_root, resolve_paths

    wiki = OmegaConf.load(ROOT / "configs/data/wikitext103.yaml")
    text = OmegaConf.load(ROOT / "configs/data/text.yaml")
    assert wiki.path is None and wiki.cache_dir is None and text.path is None and text.cache_dir is None
    monkeypatch.setenv("TNL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TNL_CACHE_DIR", str(tmp_path / "cache"))
    assert data_root(wiki) == str(tmp_path / "data")
    assert data_root(text) is None  # data=text names its own files
    assert cache_root(wiki) == tmp_path / "cache"
    wiki.cache_dir, text.path = "~/elsewhere", "/corpus"
    assert cache_root(wiki) == Path("~/elsewhere").expanduser() and data_root(text) == "/corpus"
    resolve_paths(wiki)
    assert (wiki.path, wiki.cache_dir) == (str(tmp_path / "data"), str(Path("~/elsewhere").expanduser()))
    monkeypatch.delenv("TNL_DATA_DIR")
    monkeypatch.delenv("TNL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fresh = OmegaConf.load(ROOT / "configs/data/wikitext103.yaml")
    assert data_root(fresh) is None and cache_root(fresh) == tmp_path / "xdg" / "tnl"  # the hub; the XDG cache


def test_caches_are_published_whole(tmp_path, monkeypatch):
    """A token-cache build that fails leaves no folder behind; a finished one has no temporary folder beside it."""
    import datasets

    tok = train_bpe(datasets.Dataset.from_dict({"text": ["alpha beta gamma"] * 50}), 280)
    with pytest.raises(DataError, match="no documents"):
        build_token_array(lambda: datasets.Dataset.from_dict({"text": []}), tok, tmp_path, "empty", num_proc=1,
                          log=lambda *_: None)
    assert not list((tmp_path / "tokens").iterdir())
    arr = build_token_array(lambda: datasets.Dataset.from_dict({"text": ["alpha beta"] * 3}), tok, tmp_path, "k",
                            num_proc=1, log=lambda *_: None)
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [arr.path.name]
    assert len(arr.doc_starts) == 3


@pytest.mark.parametrize("sample_by", ["line", "document"])
def test_one_text_file_is_the_train_split_with_held_out_validation(tmp_path, sample_by):
    """data.path may be one file: the train split; without data.files.validation the first
    data.validation_fraction of its documents (of its lines, when the file is one document) is validation."""
    lines = [f"line {i} " + "word " * (i % 7) + "\n" for i in range(200)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(lines))
    data = OmegaConf.load(ROOT / "configs/data/text.yaml")
    data.path, data.cache_dir, data.sample_by, data.validation_fraction = str(corpus), str(tmp_path), sample_by, 0.1
    train, val = (load_documents(data, s)["text"] for s in ("train", "validation"))
    assert "".join(val) == "".join(lines[:20]) and "".join(train) == "".join(lines[20:])  # disjoint, together whole
    assert len(train) == (180 if sample_by == "line" else 1)
    keys = {s: source_key(data, s) for s in ("train", "validation")}
    data.validation_fraction = 0.2
    assert keys["train"] != keys["validation"] != source_key(data, "validation")  # a cache per split and fraction

    (tmp_path / "val.txt").write_text("held apart\n")
    data.files = {"validation": ["val.txt"]}  # relative to the file's folder
    assert load_documents(data, "validation")["text"] == ["held apart\n"]
    assert "".join(load_documents(data, "train")["text"]) == "".join(lines)
    data.files, data.validation_fraction = {}, 0
    with pytest.raises(DataError, match="data.files.validation=.* or set data.validation_fraction"):
        load_documents(data, "validation")
    data.path = str(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="data.path .*missing.txt not found"):
        load_documents(data, "train")
