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


def _compose(*overrides: str):
    register_schema()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("name", [None, *EXPERIMENTS])
def test_shipped_configs_pass_the_start_checks(name):
    from tnl.train.config import check_config

    check_config(_compose(*([f"experiment={name}"] if name else [])))


def test_default_config_sizes_its_model_to_its_tokenizer():
    """`tnl train` without an experiment: the tiny model takes the BPE's vocabulary (8192) instead of refusing it."""
    from tests.helpers.eval_common import make_tokenizer
    from tnl.train.loop import model_config

    cfg = _compose()
    assert cfg.tokenizer.vocab_size == 8192 and cfg.model.vocab_size is None
    tok = make_tokenizer(vocab_size=300)
    assert model_config(cfg, tok).vocab_size == 320  # len(tok) rounded up to a multiple of 64


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_lrpe_list_follows_the_layer_count_unless_set(layers):
    from tnl.train.config import ConfigError, check_config

    cfg = _compose("experiment=quickstart", f"model.decoder_layers={layers}")
    check_config(cfg)
    fields = {**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": 1000}
    assert TransnormerConfig(**fields).linear_use_lrpe_list == [1] + [0] * (layers - 1)
    with pytest.raises(ConfigError, match=f"linear_use_lrpe_list has 2 entries for {layers} layers"):
        check_config(_compose("experiment=quickstart", f"model.decoder_layers={layers}",
                              "model.linear_use_lrpe_list=[1,0]"))


@pytest.mark.parametrize(("override", "message"), [
    ("train.batch_size=0", "train.batch_size=0 is not valid; use an integer >= 1"),
    ("train.log_every=0", "train.log_every=0 is not valid; use an integer >= 1"),
    ("optim.lr=-0.1", "optim.lr=-0.1 is not valid; use a number >= 0"),
    ("optim.name=sgd", "optim.name=sgd is not valid; use adamw"),
    ("scheduler.warmup_steps=-1", "scheduler.warmup_steps=-1 is not valid"),
    ("tokenizer.vocab_size=256", "tokenizer.vocab_size=256 is not valid; use an integer >= 257"),
    ("tokenizer.vocab_size=null", "tokenizer.vocab_size=None is not valid"),
    ("tokenizer.min_frequency=0", "tokenizer.min_frequency=0 is not valid"),
    ("model.hidden_dim=30", "model: hidden_dim 30 must be divisible by 4 heads"),
    ("model.token_mixer=rnn", "model: token_mixer must be one of"),
    ("+model.hiden_dim=3", "unknown model field(s) ['hiden_dim']"),
])
def test_bad_values_are_refused_with_the_key_and_the_range(override, message):
    from tnl.train.config import ConfigError, check_config

    with pytest.raises(ConfigError) as info:
        check_config(_compose(override))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_key_that_the_chosen_tokenizer_ignores_is_refused():
    from tnl.train.config import ConfigError, check_config

    with pytest.raises(ConfigError, match="tokenizer.name has no effect with tokenizer=bpe"):
        check_config(_compose("tokenizer.name=gpt2"))
    for extra in ("tokenizer.vocab_size=100", "tokenizer.min_frequency=5"):
        with pytest.raises(ConfigError, match=f"{extra.split('=')[0]} has no effect with tokenizer=hf"):
            check_config(_compose("tokenizer=hf", "tokenizer.name=gpt2", extra))
    check_config(_compose("tokenizer=hf", "tokenizer.name=gpt2"))  # loads nothing: only the keys are checked
