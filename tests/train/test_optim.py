"""Weight decay on the weight matrices only: norms, embeddings and biases land in the group without decay; the
value checks of the optimizer and early-stopping keys."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tnl.model import TransnormerConfig, TransnormerForCausalLM
from tnl.train import register_schema
from tnl.train.config import ConfigError, _check_ranges, check_config
from tnl.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    register_schema()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=["optim.weight_decay=0.25", *overrides])


def _groups(model, cfg) -> tuple[set[str], set[str]]:
    opt = build_optimizer(cfg, model, on_cuda=False)
    name_of = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = opt.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.25, 0.0)
    return {name_of[id(p)] for p in decayed["params"]}, {name_of[id(p)] for p in plain["params"]}


def _model(**kw) -> TransnormerForCausalLM:
    base = dict(vocab_size=96, decoder_embed_dim=32, decoder_layers=2, decoder_attention_heads=4, hidden_dim=32,
                glu_dim=64)
    return TransnormerForCausalLM(TransnormerConfig(**{**base, **kw}))


@pytest.mark.parametrize("kw", [
    dict(bias=True),  # TNL with biases, LRPE angles, a tied LM head
    dict(token_mixer="softmax", qk_norm=True, tie_word_embeddings=False),  # norm weights, an untied LM head
])
def test_only_weight_matrices_of_linear_layers_decay(kw):
    model = _model(**kw)
    decayed, plain = _groups(model, _cfg())
    names = {n for n, _ in model.named_parameters()}
    linear_weights = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    linear_weights &= names  # the tied LM head is the embedding's tensor, listed once under its name
    assert decayed == linear_weights and plain == names - linear_weights and not decayed & plain
    assert "model.embed_tokens.weight" in plain
    assert any(n.endswith(".bias") for n in plain) == bool(kw.get("bias"))
    assert any("norm" in n for n in plain) == bool(kw.get("qk_norm"))
    assert ("lm_head.weight" in decayed) == (kw.get("tie_word_embeddings") is False)


def test_no_decay_chooses_the_kinds_left_out():
    model = _model(bias=True, token_mixer="softmax", qk_norm=True)
    decayed, plain = _groups(model, _cfg("optim.no_decay=[norm]"))  # embeddings and biases decay too
    assert "model.embed_tokens.weight" in decayed and any(n.endswith(".bias") for n in decayed)
    assert {n for n in plain} == {n for n, _ in model.named_parameters() if "norm" in n}
    with pytest.raises(ConfigError, match=r"optim.no_decay=\['norms'\] is not valid; use a list of bias"):
        check_config(_cfg("optim.no_decay=[norms]"))


@pytest.mark.parametrize("overrides, message", [
    (("train.early_stop_patience=2", "train.eval_every=0"), "train.early_stop_patience=2 is not valid; use it "
     "together with train.eval_every > 0"),
    (("train.early_stop_patience=-1",), "train.early_stop_patience=-1 is not valid"),
])
def test_early_stopping_needs_evaluations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_cfg(*overrides))
    _check_ranges(_cfg("train.early_stop_patience=0", "train.eval_every=0"))  # 0: off (the values alone: no data)
