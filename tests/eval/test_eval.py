"""Document perplexity: windows vs lm-eval, scores vs brute-force loops, metrics vs their definitions."""

from __future__ import annotations

import math
import random
import re

import pytest
import torch

from tests.helpers.eval_common import brute_force_loglik, make_gpt2, make_tokenizer, random_article
from tnl.data import detokenize
from tnl.eval import EvalError, evaluate_documents, rolling_windows, score_stream, score_windows, window_pairs


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tok):
    return make_gpt2(len(tok), n_positions=128)


def _docs(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [random_article(rng, n_lines=rng.randint(1, 3)) for _ in range(n)]


def test_windows_match_lm_eval_gold():
    # lm-eval's own test vector for get_rolling_token_windows(range(34), prefix -100, max_seq_len 10, context_len 1)
    gold = [
        ([-100, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ([9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
        ([19, 20, 21, 22, 23, 24, 25, 26, 27, 28], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]),
        ([23, 24, 25, 26, 27, 28, 29, 30, 31, 32], [30, 31, 32, 33]),
    ]
    assert window_pairs(list(range(34)), -100, 10) == gold
    assert window_pairs([5, 6, 7], -1, 10) == [([-1, 5, 6], [5, 6, 7])]
    assert window_pairs([], -1, 10) == []


@pytest.mark.parametrize("seed", range(20))
def test_windows_score_every_token_once(seed):
    rng = random.Random(seed)
    n, length = rng.randint(1, 200), rng.randint(1, 40)
    stride = rng.randint(1, length)
    x = list(range(n + 1))  # x[0] is the prefix; x[j] is token j-1
    scored = []
    for w in rolling_windows(n, length, stride):
        assert 0 <= w.start < w.end <= n and w.end - w.start <= length and 1 <= w.num_scored <= w.end - w.start
        for j in range(w.end - w.num_scored + 1, w.end + 1):  # x-index of each scored target
            scored.append(j)
            assert j - w.start >= min(j, length - stride + 1)  # context it is predicted from
    assert scored == x[1:]
    assert rolling_windows(n, length, length) == rolling_windows(n, length)


@pytest.mark.parametrize("length,stride,batch_size", [(16, None, 1), (16, None, 4), (16, 5, 3), (7, 2, 4)])
def test_score_windows_matches_brute_force(gpt2, tok, batch_size, length, stride):
    token_lists = [tok(d, add_special_tokens=False)["input_ids"][: 20 + 9 * i] for i, d in enumerate(_docs(4))]
    got = score_windows(gpt2, token_lists, 0, max_length=length, stride=stride, batch_size=batch_size)
    for toks, ll in zip(token_lists, got):
        ref = sum(brute_force_loglik(gpt2, inp, pred) for inp, pred in window_pairs(toks, 0, length, stride))
        assert ll == pytest.approx(ref, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("chunk,batch_size", [(1, 1), (5, 3), (1000, 2)])
def test_score_stream_equals_full_context(gpt2, tok, chunk, batch_size):
    token_lists = [tok(d, add_special_tokens=False)["input_ids"][: 10 + 15 * i] for i, d in enumerate(_docs(3, 2))]
    got = score_stream(gpt2, token_lists, 0, chunk_size=chunk, batch_size=batch_size)
    for toks, ll in zip(token_lists, got):
        ref = brute_force_loglik(gpt2, [0, *toks[:-1]], toks)  # every token sees the whole prefix
        assert ll == pytest.approx(ref, rel=1e-5, abs=1e-4)


def test_evaluate_documents_metrics(gpt2, tok):
    rng = random.Random(3)
    docs = [random_article(rng, n_lines=1)[:70] + " \n" for _ in range(2)]
    docs[0] = docs[0].replace(" \n", " 1 @-@ 2 ( 3 ) \n", 1)  # something the detokenizer changes
    res = evaluate_documents(gpt2, tok, docs, mode="window", max_length=128, batch_size=2)
    texts = [detokenize(d) for d in docs]
    assert texts[0] != docs[0]
    toks = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert max(len(t) for t in toks) <= 128  # one window each: the reference is plain full-context scoring
    # BOS (not EOS: they differ here) conditions the first token; test_eval_lm_eval.py pins this against lm-eval
    assert tok.bos_token_id != tok.eos_token_id
    ll = sum(brute_force_loglik(gpt2, [tok.bos_token_id, *t[:-1]], t, per_token=True) for t in toks)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    assert (res["num_tokens"], res["num_words"], res["num_bytes"]) == (sum(map(len, toks)), words, nbytes)
    assert res["log_likelihood"] == pytest.approx(ll, rel=1e-5)
    assert res["word_perplexity"] == pytest.approx(math.exp(-ll / words), rel=1e-4)
    assert res["byte_perplexity"] == pytest.approx(math.exp(-ll / nbytes), rel=1e-4)
    assert res["token_perplexity"] == pytest.approx(math.exp(-ll / sum(map(len, toks))), rel=1e-4)
    assert res["bits_per_byte"] == pytest.approx(-ll / nbytes / math.log(2), rel=1e-5)
    assert res["mode"] == "window" and res["max_length"] == 128
    assert not gpt2.training


def test_sliding_sees_more_context_than_window(gpt2, tok):
    docs = _docs(2, seed=4)
    win = evaluate_documents(gpt2, tok, docs, mode="window", max_length=16)
    same = evaluate_documents(gpt2, tok, docs, mode="sliding", max_length=16, stride=16 - 1)
    assert same["num_tokens"] == win["num_tokens"]
    full = evaluate_documents(gpt2, tok, docs, mode="window", max_length=128)
    slide_full = evaluate_documents(gpt2, tok, docs, mode="sliding", max_length=128, stride=100)
    assert slide_full["log_likelihood"] == pytest.approx(full["log_likelihood"], rel=1e-5)  # one window anyway


def test_evaluate_documents_errors(gpt2, tok):
    docs = _docs(1)
    with pytest.raises(EvalError, match="recurrent"):
        evaluate_documents(gpt2, tok, docs, mode="stream")
    with pytest.raises(EvalError, match="mode"):
        evaluate_documents(gpt2, tok, docs, mode="rolling")
    with pytest.raises(EvalError, match="positions"):
        evaluate_documents(gpt2, tok, docs, max_length=4096)
    with pytest.raises(EvalError, match="stride"):
        evaluate_documents(gpt2, tok, docs, mode="sliding", max_length=16, stride=16)
    with pytest.raises(EvalError, match="sliding"):
        evaluate_documents(gpt2, tok, docs, mode="window", max_length=16, stride=8)
    with pytest.raises(EvalError, match="no documents"):
        evaluate_documents(gpt2, tok, [], max_length=16)
    assert issubclass(EvalError, ValueError)


def _tnl_or_skip():
    try:
        import tnl.model  # noqa: F401
    except Exception as err:  # the model package is written alongside
        pytest.skip(f"tnl.model not importable: {err}")


def test_tnl_stream_equals_full_window(tok):
    _tnl_or_skip()
    from tests.helpers.eval_common import make_tnl

    model = make_tnl(len(tok))
    docs = _docs(3, seed=5)
    full = evaluate_documents(model, tok, docs, mode="window", max_length=100_000, batch_size=1)
    for chunk, bs in ((16, 3), (64, 1)):
        stream = evaluate_documents(model, tok, docs, mode="stream", max_length=chunk, batch_size=bs)
        assert stream["num_tokens"] == full["num_tokens"]
        assert stream["log_likelihood"] == pytest.approx(full["log_likelihood"], rel=1e-5)
    short = [tok(detokenize(d), add_special_tokens=False)["input_ids"] for d in docs]
    got = score_windows(model, short, 0, max_length=9, batch_size=3)
    for toks, ll in zip(short, got):
        ref = sum(brute_force_loglik(model, i, p) for i, p in window_pairs(toks, 0, 9))
        assert ll == pytest.approx(ref, rel=1e-5, abs=1e-4)


def test_wikitext_validation_counts(data_dir, tok):
    """Real articles: words/bytes counted on the original text, tokens on the detokenized text."""
    from omegaconf import OmegaConf

    from tnl.data import load_documents

    cfg = OmegaConf.load("configs/data/wikitext103.yaml")
    cfg.path = str(data_dir)
    docs = list(load_documents(cfg, "validation", detokenized=False)["text"])[:2]
    assert " @-@ " in "".join(docs) or " @,@ " in "".join(docs)  # original WikiText tokenization
    model = make_gpt2(len(tok), n_positions=64)
    res = evaluate_documents(model, tok, docs, max_length=64, batch_size=8)
    assert res["num_words"] == sum(len(re.split(r"\s+", d)) for d in docs)
    assert res["num_bytes"] == sum(len(d.encode()) for d in docs)
    assert res["num_tokens"] == sum(len(tok(detokenize(d), add_special_tokens=False)["input_ids"]) for d in docs)
    assert math.isfinite(res["word_perplexity"]) and res["bits_per_byte"] > 0


def test_tokens_not_affected_by_padding(gpt2, tok):
    """Right padding in a batch never changes a window's score (causal model, no mask needed)."""
    lists = [tok(d, add_special_tokens=False)["input_ids"][:k] for d, k in zip(_docs(3, seed=6), (5, 40, 17))]
    one = [score_windows(gpt2, [t], 0, max_length=50)[0] for t in lists]
    batched = score_windows(gpt2, lists, 0, max_length=50, batch_size=3)
    assert torch.allclose(torch.tensor(one, dtype=torch.float64), torch.tensor(batched, dtype=torch.float64),
                          rtol=1e-5, atol=1e-4)


def test_fingerprints(tok):
    from tnl.eval import fingerprint_documents, fingerprint_model, format_table

    a, b = make_gpt2(len(tok), seed=0), make_gpt2(len(tok), seed=0)
    assert fingerprint_model(a) == fingerprint_model(b)
    with torch.no_grad():
        b.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    assert fingerprint_model(a) != fingerprint_model(b)
    docs = _docs(2)
    assert fingerprint_documents(docs) == fingerprint_documents(list(docs))
    assert fingerprint_documents(docs) != fingerprint_documents(docs[::-1])
    assert fingerprint_documents(["ab", "c"]) != fingerprint_documents(["a", "bc"])
    res = evaluate_documents(a, tok, docs, max_length=16)
    table = format_table({**res, "split": "validation"})
    assert "word_perplexity" in table and "validation" in table
