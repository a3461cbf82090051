"""Cross-check with lm-evaluation-harness itself (`lm_eval` is in the dev extra that `make test` installs; elsewhere,
such as a GPU image without it, the file skips, but never under CI, where a missing install must fail).

An exported folder loads in lm-eval's HF backend (`pretrained=DIR, trust_remote_code=True`), its rolling
log-likelihoods equal ours for the same max_length, and lm-eval's own wikitext detokenizer, process_results
and aggregations give the same word/byte perplexity and bits per byte as `evaluate_documents`.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.helpers.eval_common import make_tokenizer, random_article

if os.environ.get("CI"):
    import lm_eval  # noqa: F401
else:
    lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("tnl.model")


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [16, 64])
def test_exported_model_matches_lm_eval_wikitext(tmp_path, monkeypatch, max_length):
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

    from tests.helpers.eval_common import make_tnl
    from tnl.eval import evaluate_documents
    from tnl.export import export_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    tok = make_tokenizer()
    model = make_tnl(len(tok))
    out = export_hf(model, tok, tmp_path / "export")
    rng = random.Random(max_length)
    pages = [random_article(rng, n_lines=rng.randint(1, 3)) for _ in range(3)]
    pages[0] = pages[0].replace(" \n", " 3 @,@ 000 ( a ) \n", 1)

    lm = HFLM(pretrained=str(out), trust_remote_code=True, max_length=max_length, batch_size=1, device="cpu")
    requests = [Instance(request_type="loglikelihood_rolling", doc={"page": p},
                         arguments=(wikitext_detokenizer({"page": p}),), idx=i) for i, p in enumerate(pages)]
    lls = lm.loglikelihood_rolling(requests)
    per_doc = [process_results({"page": p}, [ll]) for p, ll in zip(pages, lls)]

    ours = evaluate_documents(model, tok, pages, mode="window", max_length=max_length, batch_size=2)
    assert ours["log_likelihood"] == pytest.approx(sum(lls), rel=1e-5)
    assert ours["word_perplexity"] == pytest.approx(weighted_perplexity([r["word_perplexity"] for r in per_doc]),
                                                    rel=1e-5)
    assert ours["byte_perplexity"] == pytest.approx(weighted_perplexity([r["byte_perplexity"] for r in per_doc]),
                                                    rel=1e-5)
    assert ours["bits_per_byte"] == pytest.approx(bits_per_byte([r["bits_per_byte"] for r in per_doc]), rel=1e-5)


# One snippet per rule of lm-eval's wikitext detokenizer, each changed by that rule: deleting or reordering a rule in
# tnl's copy makes its snippet differ from what lm-eval's own function gives.
RULE_SNIPPETS = [
    "the kings ' men", "/' 5/ x", "a well @-@ known", "1 @,@ 900", "3 @.@ 5", "note : this", "one ; two",
    "end . Next", "stop ! Go", "why ? Because", "red , blue", "x ( a b ) y", "x [ a ] y", "x { a } y", 'x " a " y',
    "x ' a ' y", "= = = = Sub = = = =", "= = = Sub = = =", "= = Sec = =", "20 ° C", "line \nnext", "line\n next",
    "in N years", "the king 's", "\" ( nested , ' q ' ) \" @-@ 2",
]


@pytest.mark.parametrize("snippet", RULE_SNIPPETS)
def test_detokenizer_equals_lm_eval(snippet):
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from tnl.data import detokenize

    expected = wikitext_detokenizer({"page": snippet})
    assert expected != snippet  # the snippet exercises a rule
    assert detokenize(snippet) == expected


def test_detokenizer_equals_lm_eval_on_wikitext_valid(data_dir):
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from tnl.data import detokenize

    text = (data_dir / "wikitext-2-raw" / "wiki.valid.raw").read_text(encoding="utf-8")
    assert detokenize(text) == wikitext_detokenizer({"page": text})


@pytest.mark.parametrize("bos", [True, False])
def test_prefix_token_and_scores_equal_lm_eval(bos):
    """The token that conditions a document's first token is lm-eval's own choice (its HFLM.prefix_token_id: BOS,
    else EOS), and with it the rolling log-likelihoods are equal, for a tokenizer whose BOS differs from its EOS and
    for one without BOS."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from tests.helpers.eval_common import make_gpt2
    from tnl.eval import evaluate_documents
    from tnl.eval.perplexity import prefix_token_id

    tok = make_tokenizer(bos=bos)
    model = make_gpt2(len(tok), n_positions=64)
    lm = HFLM(pretrained=model, tokenizer=tok, max_length=32, batch_size=1, device="cpu")
    assert prefix_token_id(tok) == lm.prefix_token_id == (tok.bos_token_id if bos else tok.eos_token_id)
    rng = random.Random(7)
    pages = [random_article(rng, n_lines=1) for _ in range(2)]
    requests = [Instance(request_type="loglikelihood_rolling", doc={"page": p},
                         arguments=(wikitext_detokenizer({"page": p}),), idx=i) for i, p in enumerate(pages)]
    lls = lm.loglikelihood_rolling(requests)
    ours = evaluate_documents(model, tok, pages, mode="window", max_length=32, batch_size=2)
    assert ours["log_likelihood"] == pytest.approx(sum(lls), rel=1e-5)
