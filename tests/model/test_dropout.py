"""Dropout as fairseq's transformer_lm places it (the paper's WikiText-103 setup): on the embeddings after scaling
and positions (embed_dropout, default dropout), on each token and channel mixer's output before the residual add
(dropout), inside the channel mixer on its hidden activation (activation_dropout), on softmax weights
(attention_dropout). Eval is exact; training drops each site at its own rate."""

from __future__ import annotations

import math

import pytest
import torch

from tests.model.test_model import V, make

RATES = dict(dropout=0.3, embed_dropout=0.2, activation_dropout=0.4, attention_dropout=0.25)


def _zero_fraction_and_scale(dropped: torch.Tensor, kept: torch.Tensor, p: float) -> tuple[float, float]:
    """Fraction of entries dropped, and the largest deviation of kept entries from kept / (1 - p) (relative)."""
    zero = dropped == 0
    frac = zero.double().mean().item()
    live = ~zero & (kept.abs() > 1e-3)
    dev = ((dropped[live] * (1 - p) - kept[live]).abs() / kept[live].abs()).max().item()
    return frac, dev


def _tolerance(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)  # 5 standard deviations of the observed fraction


@pytest.mark.parametrize("mixer", ["tnl", "softmax", "hybrid"])
def test_eval_is_exact_and_equals_no_dropout(mixer):
    model = make(mixer, **RATES, hybrid_block_size=4).double()
    plain = make(mixer, hybrid_block_size=4).double()
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(1, V, (2, 33))
    a, b = model(ids).logits, model(ids).logits
    assert torch.equal(a, b) and torch.equal(a, plain(ids).logits)
    model.train()
    assert not torch.equal(model(ids).logits, a)  # and the rates do act in training


def test_no_dropout_modules_without_rates():
    model = make(channel_mixer="mlp")
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_embedding_dropout_rate_and_scale():
    """hidden_states[0] (the blocks' input) is the scaled embedding with embed_dropout's mask (positions added first
    for the baselines: sinusoidal positions are inside what is dropped)."""
    for mixer, kw in (("tnl", {}), ("softmax", {"position_encoding": "sinusoidal"})):
        p = 0.2
        model = make(mixer, embed_dropout=p, **kw).train()
        plain = make(mixer, **kw)
        plain.load_state_dict(model.state_dict())
        ids = torch.randint(1, V, (8, 64))
        got = model(ids, output_hidden_states=True).hidden_states[0]
        want = plain(ids, output_hidden_states=True).hidden_states[0]
        frac, dev = _zero_fraction_and_scale(got, want, p)
        assert abs(frac - p) < _tolerance(p, got.numel()), (mixer, frac)
        assert dev < 1e-5


def test_embed_dropout_defaults_to_dropout():
    from tnl.model import TransnormerConfig

    assert TransnormerConfig(dropout=0.15).embed_dropout is None
    model = make(dropout=0.15)
    assert model.model.embed_dropout.p == 0.15
    assert make(dropout=0.15, embed_dropout=0.0).model.embed_dropout.__class__ is torch.nn.Identity


@pytest.mark.parametrize("mixer", ["tnl", "softmax"])
def test_residual_branch_dropout_rate_on_both_mixer_outputs(mixer):
    """x1 = x + drop(TokenMixer(norm x)), x2 = x1 + drop(ChannelMixer(norm x1)): the branch outputs are captured
    by hooks and compared with what reached the residual stream."""
    p = 0.3
    model = make(mixer, dropout=p, embed_dropout=0.0).train()
    layer = model.model.layers[1]
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    layer.token_mixer.register_forward_hook(lambda m, args, out: seen.__setitem__("tok", out))
    layer.channel_norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("x1", args[0]))
    layer.channel_mixer.register_forward_hook(lambda m, args, out: seen.__setitem__("chan", out))
    layer.register_forward_hook(lambda m, args, out: seen.__setitem__("x2", out))
    with torch.no_grad():
        model(torch.randint(1, V, (8, 64)))
    for branch, added in (("tok", seen["x1"] - seen["x"]), ("chan", seen["x2"] - seen["x1"])):
        kept = seen[branch]
        # a dropped entry adds exactly nothing; a kept one adds branch / (1 - p) (up to the residual add's rounding)
        frac = (added == 0).double().mean().item()
        assert abs(frac - p) < _tolerance(p, added.numel()), (branch, frac)
        live = added != 0
        torch.testing.assert_close(added[live] * (1 - p), kept[live], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channel_mixer", ["sglu", "swiglu", "mlp"])
def test_activation_dropout_rate_inside_the_channel_mixer(channel_mixer):
    """With the output projection set to the identity, the channel mixer returns its hidden activation with
    activation_dropout's mask: SGLU l1 x * l2 x (SwiGLU silu(l1 x) * l2 x), MLP gelu(fc1 x)."""
    import torch.nn.functional as F

    p = 0.4
    d = 48
    glu = 32 if channel_mixer == "mlp" else d  # the MLP's hidden size is 3 * glu_dim / 2: the identity fits both
    model = make(channel_mixer=channel_mixer, activation_dropout=p, glu_dim=glu, decoder_embed_dim=d).train()
    mix = model.model.layers[0].channel_mixer
    out_proj = mix.fc2 if channel_mixer == "mlp" else mix.l3
    assert out_proj.weight.shape == (d, d)
    x = torch.randn(16, 64, d)
    with torch.no_grad():
        out_proj.weight.copy_(torch.eye(d))
        if channel_mixer == "mlp":
            want = F.gelu(mix.fc1(x))
        else:
            a = mix.l1(x)
            want = (F.silu(a) if channel_mixer == "swiglu" else a) * mix.l2(x)
    got = mix(x.requires_grad_())  # the training path (memory-saving product for the GLUs)
    frac, dev = _zero_fraction_and_scale(got.detach(), want, p)
    assert abs(frac - p) < _tolerance(p, got.numel()), frac
    assert dev < 1e-4
    mix.eval()
    torch.testing.assert_close(mix(x), want, rtol=1e-5, atol=1e-6)


def test_bad_rates_are_refused():
    from tnl.model import TransnormerConfig

    for field in ("dropout", "embed_dropout", "activation_dropout", "attention_dropout"):
        with pytest.raises(ValueError, match=f"{field} must be in \\[0, 1\\)"):
            TransnormerConfig(**{field: 1.0})
        with pytest.raises(ValueError, match=field):
            TransnormerConfig(**{field: -0.1})


def test_rates_travel_with_the_saved_config(tmp_path):
    """The rates are model config fields: config.json (what exports and run folders hold) keeps them."""
    from tnl.model import TransnormerConfig

    TransnormerConfig(**RATES).save_pretrained(tmp_path)
    again = TransnormerConfig.from_pretrained(tmp_path)
    assert {k: getattr(again, k) for k in RATES} == RATES
