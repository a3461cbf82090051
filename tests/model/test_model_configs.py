"""Named model configs (configs/model/*.yaml): parameter counts against a closed form, and that each builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tools import count_params
from tools.model_configs import load_config

ROOT = Path(__file__).resolve().parents[2]


def closed_form(v: int, d: int, n_layers: int, heads: int, hidden: int, glu: int, mixer: str = "tnl",
                kv_heads: int | None = None, lrpe_layers: int = 1) -> int:
    """Tied embedding V d, plus per layer: TNL qkvu (4 d h) + out (h d), softmax q/out (2 d h) + k/v (2 d h_kv);
    channel mixer 3 d g; LRPE theta h on each LRPE layer. No biases, weightless SRMSNorms."""
    if mixer == "tnl":
        mix = 5 * d * hidden
        extra = lrpe_layers * hidden
    else:
        kv = hidden // heads * (kv_heads or heads)
        mix = 2 * d * hidden + 2 * d * kv
        extra = 0
    return v * d + n_layers * (mix + 3 * d * glu) + extra


EXPECTED = {
    "tiny": closed_form(256, 64, 2, 4, 64, 128),
    "tnl_44m": closed_form(50265, 512, 6, 8, 512, 1286),
    "transformer_44m": closed_form(50265, 512, 6, 8, 512, 1370, mixer="softmax"),
    "tnl_385m": closed_form(64000, 1024, 24, 8, 1024, 2816),
    "tnl_1b": closed_form(64000, 2048, 16, 16, 2048, 5632),
    "tnl_3b": closed_form(64000, 2560, 32, 20, 2560, 6912),
    "tnl_7b": closed_form(64000, 4096, 30, 32, 4096, 11008),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_closed_form(name):
    total, _ = count_params.count_params(load_config(name))
    assert total == EXPECTED[name]


def test_every_yaml_is_covered_and_sizes_are_as_published():
    assert {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")} == set(EXPECTED)
    assert 80_000 <= EXPECTED["tiny"] <= 130_000
    # the paper's WikiText-103 pair: TNL 45.45M vs Transformer 44.65M, within 3% of each other
    assert round(EXPECTED["tnl_44m"] / 1e6, 2) == 45.45 and round(EXPECTED["transformer_44m"] / 1e6, 2) == 44.65
    assert abs(EXPECTED["tnl_44m"] / EXPECTED["transformer_44m"] - 1) < 0.03
    assert EXPECTED["tnl_7b"] == 6_836_719_616 and EXPECTED["tnl_1b"] == 1_020_266_496


def test_tiny_config_runs_forward_and_backward():
    from tnl.model import TransnormerForCausalLM

    model = TransnormerForCausalLM(load_config("tiny"))
    ids = torch.randint(0, 256, (2, 16))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.layers[0].token_mixer.qkvu_proj.weight.grad.abs().sum() > 0


def test_count_params_tool_prints_every_config(capsys):
    count_params.main([])
    out = capsys.readouterr().out
    assert "tnl_7b" in out and "6,836,719,616" in out and "45.45M" in out


def test_unknown_config_name_gets_a_one_line_error():
    with pytest.raises(ValueError, match="no model config 'tnl_9b'; the configs are .*tnl_385m"):
        load_config("tnl_9b")
