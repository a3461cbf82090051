"""The paper's ablation arms are settable from the command line on the TNL-44M experiment: each arm's overrides
(`model.<field>=` and `++model.<field>=`) compose through Hydra and build the model they name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")

from tnl.model import TransnormerConfig, TransnormerForCausalLM  # noqa: E402
from tnl.model.layers import MLP, Lrpe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# arm -> (overrides, check of the built model)
ARMS = {
    "mlp": (["model.channel_mixer=mlp"],
            lambda m: all(isinstance(layer.channel_mixer, MLP) for layer in m.model.layers)),
    "no_lrpe": (["model.linear_use_lrpe_list=[0,0,0,0,0,0]"],
                lambda m: not any(isinstance(x, Lrpe) for x in m.modules())),
    "decay_none": (["model.decay_schedule=none"],
                   lambda m: all(max(layer.token_mixer.decay_list) == 0 for layer in m.model.layers)),
    "decay_tnl": (["model.decay_schedule=tnl"],
                  lambda m: min(m.model.layers[-1].token_mixer.decay_list) > 0),
    "decay_paper": (["model.decay_schedule=paper"],
                    lambda m: m.model.layers[2].token_mixer.decay_list[1] == pytest.approx(8 / 8 * (1 - 2 / 6) * 1)),
    **{f"hybrid_{c}": (["model.token_mixer=hybrid", f"model.hybrid_block_size={c}"],
                       lambda m, c=c: all(getattr(layer.token_mixer, "block", None) == c for layer in m.model.layers))
       for c in (16, 64, 256)},
    "dropouts": (["model.dropout=0.2", "model.embed_dropout=0.1", "model.activation_dropout=0.3"],
                 lambda m: getattr(m.model.embed_dropout, "p", 0) == 0.1 and m.model.layers[0].dropout.p == 0.2
                 and getattr(m.model.layers[0].channel_mixer.act_dropout, "p", 0) == 0.3),
}


def _model(overrides: list[str]) -> TransnormerForCausalLM:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tnl.train.config import check_model_fields, register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=wt103_tnl_44m", *overrides])
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_fields(fields)
    with torch.device("meta"):
        return TransnormerForCausalLM(TransnormerConfig(**fields))


@pytest.fixture(scope="module")
def base() -> TransnormerForCausalLM:
    return _model([])


@pytest.mark.parametrize("arm", sorted(ARMS))
@pytest.mark.parametrize("prefix", ["", "++"])
def test_ablation_arm_composes_and_builds_its_model(arm, prefix, base):
    overrides, check = ARMS[arm]
    assert check(_model([prefix + o for o in overrides]))
    assert check(base) == (arm == "decay_tnl")  # the experiment's own model is the released schedule's TNL
