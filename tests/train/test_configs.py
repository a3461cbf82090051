"""Every experiment composes against the schema, and its model fields are TransnormerConfig fields."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tnl.model import TransnormerConfig
from tnl.train import register_schema
from tnl.train.config import check_model_fields

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_builds_a_model_config(name):
    register_schema()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"])
    assert cfg.name == name
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_fields(fields)
    fields["vocab_size"] = fields.get("vocab_size") or 1000
    config = TransnormerConfig(**fields)
    assert config.decoder_layers == cfg.model.decoder_layers


def test_paper_wikitext_setting():
    register_schema()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=wt103_tnl_44m"])
    t = cfg.train
    assert (t.seq_len, t.batch_size * t.grad_accum, t.max_steps) == (512, 128, 50000)
    assert (cfg.optim.lr, tuple(cfg.optim.betas), cfg.optim.weight_decay) == (5e-4, (0.9, 0.98), 0.2)
    assert (cfg.scheduler.name, cfg.scheduler.warmup_steps, t.grad_clip, cfg.model.dropout) == (
        "inverse_sqrt", 4000, 1.0, 0.1)


def test_model_group_takes_every_model_config_field():
    """Every TransnormerConfig field (the kernel choices fused_mixer, fold_qk_activation, norm_backend, attn_backend
    included) can be set through the model group, and reaches the built model's config."""
    import inspect

    from tests.helpers.eval_common import make_tokenizer
    from tnl.train.loop import build_model

    params = set(inspect.signature(TransnormerConfig.__init__).parameters) - {"self", "kwargs"}
    check_model_fields({name: None for name in params})  # all accepted
    choices = {"fused_mixer": False, "fold_qk_activation": False, "norm_backend": "torch", "attn_backend": "torch"}
    assert set(choices) <= params
    register_schema()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["model.vocab_size=null", *(f"++model.{k}={v}" for k, v in choices.items())])
    model = build_model(cfg, make_tokenizer())
    assert {k: getattr(model.config, k) for k in choices} == choices
