"""channel_mixer="mlp": the plain MLP of the paper's SGLU ablation, fc2(gelu(fc1 x)), with SGLU's parameter count."""

from __future__ import annotations

import math

import pytest
import torch

from tests.model.test_model import V, make
from tnl.model import TransnormerConfig


def _count(**kw) -> int:
    from tools.count_params import count_params

    return count_params(TransnormerConfig(**kw))[0]


@pytest.mark.parametrize("d,glu", [(32, 48), (512, 1286), (40, 2)])
def test_mlp_has_sglus_parameter_count(d, glu):
    """Per layer SGLU holds 3 d g weights (l1, l2: d -> g, l3: g -> d); the MLP 2 d m with m = 3 g / 2."""
    base = dict(vocab_size=V, decoder_embed_dim=d, hidden_dim=d, decoder_attention_heads=4, glu_dim=glu,
                decoder_layers=2)
    sglu, mlp = _count(**base), _count(**base, channel_mixer="mlp")
    assert mlp == sglu
    layers = 2
    assert sglu - _count(**{**base, "glu_dim": 1}) == layers * 3 * d * (glu - 1)
    m = 3 * glu // 2
    assert 2 * d * m == 3 * d * glu
    # with biases the MLP has m + d of them against SGLU's 2 g + d: g / 2 fewer per layer
    assert _count(**base, bias=True) - _count(**base, bias=True, channel_mixer="mlp") == layers * glu // 2


def test_tnl_44m_with_mlp_keeps_its_size():
    from tools.count_params import count_params
    from tools.model_configs import load_config

    assert count_params(load_config("tnl_44m", channel_mixer="mlp")) == count_params(load_config("tnl_44m"))


def test_mlp_forward_is_fc2_gelu_fc1_float64():
    model = make(channel_mixer="mlp").double()
    mix = model.model.layers[1].channel_mixer
    assert mix.fc1.weight.shape == (72, 32) and mix.fc2.weight.shape == (32, 72)  # 3 * 48 / 2
    x = torch.randn(2, 7, 32, dtype=torch.float64, requires_grad=True)
    h = x @ mix.fc1.weight.T
    want = (0.5 * h * (1 + torch.erf(h / math.sqrt(2)))) @ mix.fc2.weight.T  # exact GELU
    torch.testing.assert_close(mix(x), want, rtol=1e-12, atol=1e-12)
    logits = model(torch.randint(1, V, (2, 9))).logits
    assert torch.isfinite(logits).all()


def test_mlp_needs_an_even_glu_dim_and_is_not_official(tmp_path):
    with pytest.raises(ValueError, match="channel_mixer 'mlp' needs an even glu_dim"):
        TransnormerConfig(channel_mixer="mlp", glu_dim=1287)
    from tests.helpers.eval_common import make_tokenizer
    from tnl.export import ExportError, export_official

    with pytest.raises(ExportError, match="channel_mixer='mlp'"):
        export_official(make(channel_mixer="mlp"), make_tokenizer(), tmp_path / "official")
