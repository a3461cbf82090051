"""train.init_from starts a new run from trained weights (an export, an official-layout folder, ...) with their
model config and tokenizer; train.freeze keeps parameters fixed. The first step's loss must be the source model's
loss on that step's batch, computed here from the text with the source's own tokenizer."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from tests.helpers.corpus import write_corpus
from tests.train.test_train import _args, _run
from tnl.checkpoint import load_pretrained
from tnl.data import ResumableSampler

ROOT = Path(__file__).resolve().parents[2]
SEED, SEQ, GLOBAL_BATCH = 1234, 32, 8  # train.seed, seq_len and batch_size x grad_accum of _args
# the model and tokenizer come from init_from: the shared arguments' model/tokenizer keys are left out
NOT_WITH_INIT = ("model=", "model.vocab_size=", "tokenizer.vocab_size=", "++model.dropout=")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run with its export, and the same model written in the official layout."""
    from tnl.export import export_official

    base = tmp_path_factory.mktemp("init_from")
    corpus = write_corpus(base / "corpus_a", 60, {"train": 60, "validation": 8}, 120)
    run = base / "run"
    res = _run(_args(corpus, run, "train.max_steps=3", "train.save_every=3", "train.export=true"))
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = load_pretrained(run / "export")
    official = export_official(loaded.model, loaded.tokenizer, base / "official", code_repo=None)
    other = write_corpus(base / "corpus_b", 40, {"train": 30, "validation": 6}, 90, seed=7)  # other words
    return {"run": run, "export": run / "export", "official": official, "other": other, "base": base}


def _init_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    args = [a for a in _args(corpus, out) if not a.startswith(NOT_WITH_INIT)]
    return args + ["train.max_steps=2", "train.save_every=2", *extra]


def _reference_first_loss(model_dir: Path, corpus: Path) -> float:
    """The source model's mean next-token loss on step 1's windows: the training text tokenized with the source's
    tokenizer (an EOS after each document), cut into windows, the sampler's first global batch. data=text is
    document-aware: each document's part of a window is scored on its own (brute force: one forward each)."""
    loaded = load_pretrained(model_dir)
    tok, model = loaded.tokenizer, loaded.model.float()
    tokens = []
    for line in (corpus / "train.jsonl").read_text().splitlines():
        tokens += tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = (len(tokens) - 1) // SEQ
    total, count = 0.0, 0
    for i in ResumableSampler(n, SEED).epoch_indices(0)[:GLOBAL_BATCH]:
        window = torch.tensor(tokens[i * SEQ: i * SEQ + SEQ + 1])
        cuts = [0, *[p for p in range(1, SEQ) if window[p - 1] == tok.eos_token_id], SEQ]
        for a, b in zip(cuts, cuts[1:]):
            with torch.no_grad():
                logits = model(input_ids=window[None, a:b]).logits[0]
            total += F.cross_entropy(logits.double(), window[a + 1: b + 1], reduction="sum").item()
            count += b - a
    assert count == GLOBAL_BATCH * SEQ
    return total / count


def _first_loss(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if r["step"] == 1 and "split" not in r)


def test_init_from_an_export_starts_from_its_weights_and_tokenizer_with_embeddings_frozen(source, tmp_path):
    out = tmp_path / "tuned"
    res = _run(_init_args(source["other"], out, f"train.init_from={source['export']}", "++model.dropout=0.0",
                          "train.freeze=[embed_tokens]"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "optimizer, schedule and step start fresh" in res.stdout + res.stderr
    assert _first_loss(out) == pytest.approx(_reference_first_loss(source["export"], source["other"]), rel=1e-5)
    # the run's tokenizer and model config are the export's
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (source["export"] / "tokenizer.json").read_text()
    exported = json.loads((source["export"] / "config.json").read_text())
    saved = json.loads((out / "model_config.json").read_text())
    assert {k: saved[k] for k in ("vocab_size", "decoder_layers", "decoder_embed_dim")} == {
        k: exported[k] for k in ("vocab_size", "decoder_layers", "decoder_embed_dim")}
    # steps start at 1 and the optimizer at zero: the embedding stayed, the rest moved
    state = json.loads((out / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["tokens_seen"] == 2 * GLOBAL_BATCH * SEQ
    before = load_file(str(source["export"] / "model.safetensors"))
    after = load_file(str(out / "checkpoints" / "step_2" / "model.safetensors"))
    key = "model.embed_tokens.weight"
    assert torch.equal(after[key], before[key])
    moved = [k for k in after if k != key and k in before and not torch.equal(after[k], before[k])]
    assert len(moved) == len([k for k in after if k != key and k in before]) > 0


def test_init_from_an_official_folder(source, tmp_path):
    out = tmp_path / "tuned"
    res = _run(_init_args(source["other"], out, f"train.init_from={source['official']}", "++model.dropout=0.0",
                          "train.max_steps=1", "train.save_every=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert _first_loss(out) == pytest.approx(_reference_first_loss(source["official"], source["other"]), rel=1e-5)


def _compose(*overrides: str):
    from tnl.train import register_schema

    register_schema()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_shape_changing_model_keys_and_tokenizer_settings_are_refused(source):
    from tnl.train.init_from import InitFromError, prepare_init

    cfg = _compose(f"train.init_from={source['export']}", "model.decoder_layers=3", "++model.dropout=0.2")
    with pytest.raises(InitFromError, match=r"model.decoder_layers: 2 -> 3 changes the shapes of its weights"):
        prepare_init(cfg, print, overrides=["train.init_from", "model.decoder_layers", "model.dropout"])
    with pytest.raises(InitFromError, match="takes the model and tokenizer from that folder"):
        prepare_init(cfg, print, overrides=["train.init_from", "tokenizer.vocab_size"])
    # keys that keep the shapes apply; the groups become the source's model config and tokenizer folder
    source_cfg = load_pretrained(source["export"]).model.config
    prepare_init(cfg, print, overrides=["train.init_from", "model.dropout"])
    assert cfg.model.dropout == 0.2 and cfg.model.decoder_layers == source_cfg.decoder_layers == 2
    assert cfg.tokenizer.kind == "hf" and Path(cfg.tokenizer.name) == source["export"].resolve()


def test_freeze_patterns_match_names_or_their_tails_and_a_pattern_matching_nothing_is_refused():
    from tnl.model import TransnormerConfig, TransnormerForCausalLM
    from tnl.train.init_from import InitFromError, freeze

    def model():
        return TransnormerForCausalLM(TransnormerConfig(vocab_size=64, decoder_embed_dim=32, decoder_layers=2,
                                                        decoder_attention_heads=4, glu_dim=64))

    m = model()
    freeze(m, ["model.layers.0", "*.l3"], print)
    fixed = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert fixed == {n for n, _ in m.named_parameters() if n.startswith("model.layers.0.") or ".l3." in n}
    with pytest.raises(InitFromError, match="train.freeze pattern 'embeddings' matches no parameter"):
        freeze(model(), ["embeddings"], print)
    with pytest.raises(InitFromError, match="keeps every parameter fixed"):
        freeze(model(), ["*"], print)


def test_the_token_cache_key_follows_the_tokenizer(source, tmp_path):
    """The same text tokenized with another tokenizer gets its own cache entry, holding that tokenizer's ids."""
    from omegaconf import OmegaConf

    from tnl.data import prepare_split

    data = OmegaConf.create({"kind": "text", "path": str(source["other"]), "files": {"train": ["train.jsonl"]},
                             "text_column": "text", "sample_by": "line", "detokenize": False,
                             "document_aware": False, "streaming": False, "num_proc": 1,
                             "cache_dir": str(tmp_path / "cache")})
    from tests.helpers.eval_common import make_tokenizer

    arrays = {}
    for name, tok in (("export", load_pretrained(source["export"]).tokenizer), ("other", make_tokenizer())):
        arrays[name] = (prepare_split(data, tok, "train", log=lambda *_: None), tok)
    assert arrays["export"][0].path != arrays["other"][0].path
    assert arrays["export"][0].path == prepare_split(data, arrays["export"][1], "train", log=print).path  # a hit
    text = json.loads((source["other"] / "train.jsonl").read_text().splitlines()[0])["text"]
    for array, tok in arrays.values():
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert array.tokens[: len(ids)].tolist() == ids
