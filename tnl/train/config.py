"""The structured config schema, registered in Hydra's ConfigStore.

The defaults list of configs/config.yaml starts with `schema`, so every group file is checked
against these dataclasses: a misspelt key or a wrong type fails at start with Hydra's message.
The model group stays a free mapping of TransnormerConfig fields, checked in `check_model_fields`.
Values are checked by `check_config`, which `CheckConfig` (a Hydra callback named in configs/config.yaml) runs
before Hydra creates the run folder: a bad value is one `error: ...` line before any tokenizer or data work.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tnl import settings
from tnl.errors import UserError
from tnl.model.configuration_transnormer import ATTN_BACKENDS

from .optim import NO_DECAY_KINDS
from .schedule import SCHEDULES


@dataclass
class DataConfig:
    kind: str = "wikitext"
    hub_path: str | None = None
    hub_name: str | None = None
    path: str | None = None  # None: $TNL_DATA_DIR for WikiText (tnl.data.sources.data_root)
    files: dict[str, Any] = field(default_factory=dict)
    text_column: str = "text"
    sample_by: str = "line"
    detokenize: bool = False
    document_aware: bool = False
    streaming: bool = False
    num_proc: int = 2
    cache_dir: str | None = None  # None: tnl.settings.cache_dir() ($TNL_CACHE_DIR, else ~/.cache/tnl)
    # local text without a validation entry in `files`: hold out this fraction of the training documents
    validation_fraction: float = 0.05


@dataclass
class TokenizerConfig:
    kind: str = "bpe"
    name: str | None = None
    vocab_size: int | None = 8192
    min_frequency: int = 2


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.1
    # parameters that get no weight decay (tnl.train.optim): any of bias | norm | embedding
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm", "embedding"])
    fused: bool | None = None  # None: fused on CUDA, plain elsewhere


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine | wsd | inverse_sqrt | linear | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2  # WSD: share of steps spent decaying at the end


@dataclass
class TrainConfig:
    max_steps: int = 1000
    seed: int = 1234
    seq_len: int = 512
    batch_size: int = 8  # sequences per micro-batch on each rank
    grad_accum: int = 1
    mixed_precision: str = "bf16"  # bf16 | fp16 | no
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 50
    save_every: int = 500
    keep_last: int = 3
    keep_best: bool = True  # RUN/checkpoints/best: lowest validation loss, used by the final evaluation and export
    early_stop_patience: int | None = None  # stop after this many evaluations without a better loss (null/0: off)
    init_from: str | None = None  # a new run from these weights: export, checkpoint, run or official folder
    freeze: list[str] = field(default_factory=list)  # module/parameter name patterns kept fixed
    compile: bool = False
    # with compile: fraction of the saved activations the partitioner may keep (< 1 recomputes cheap ops)
    compile_memory_budget: float = 1.0
    # with compile: recompute pointwise results (SiLU(q), the gated norm, the SGLU product) in backward instead of
    # keeping them (tnl.train.compile; tnl_385m: 37.4 -> 25.6 KB saved per token and block)
    compile_recompute_pointwise: bool = True
    activation_checkpointing: bool = False
    loss_chunk_size: int = 0  # > 0: fused linear cross-entropy over chunks of this many tokens
    attn_backend: str = "auto"  # the model's attn_backend (ATTN_BACKENDS) where the model group leaves it auto
    num_workers: int = 1
    max_bad_steps: int = 10  # consecutive non-finite losses before the run aborts
    final_eval: bool = True
    export: bool = True
    progress: bool = True


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "tnl"
    mode: str = "offline"  # offline | online | disabled
    entity: str | None = None
    run_name: str | None = None


@dataclass
class TNLConfig:
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    output_dir: str = "outputs/run"
    resume: str = "auto"  # auto | none | PATH
    name: str = "run"


class ConfigError(UserError):
    """A config value outside what training accepts."""


def register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=TNLConfig)


def check_model_fields(model_cfg: dict[str, Any]) -> None:
    """Model keys must be TransnormerConfig fields: a typo would otherwise be silently stored and ignored."""
    from tnl.model import TransnormerConfig

    known = set(TransnormerConfig().to_dict())
    unknown = sorted(set(model_cfg) - known)
    if unknown:
        raise ConfigError(f"unknown model field(s) {unknown}; see configs/model/*.yaml for the valid names")


BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte, plus its one special token (tnl.data.tokenizer)
MIXED_PRECISION = ("bf16", "fp16", "no")
TOKENIZER_DEFAULTS = {"hf": {"vocab_size": None, "min_frequency": 2}, "bpe": {"name": None}}


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is not valid; use {allowed}")


def _check_ranges(cfg: DictConfig) -> None:
    from .compile import check_memory_budget

    t, o, s = cfg.train, cfg.optim, cfg.scheduler
    for key in ("max_steps", "batch_size", "grad_accum", "seq_len", "log_every", "eval_batches", "keep_last",
                "max_bad_steps"):
        _need(t[key] >= 1, f"train.{key}", t[key], "an integer >= 1")
    for key in ("eval_every", "save_every"):
        _need(t[key] >= 0, f"train.{key}", t[key], "an integer >= 0 (0: never)")
    _need(t.num_workers >= 0, "train.num_workers", t.num_workers, "an integer >= 0 (0: load in the main process)")
    _need(t.loss_chunk_size >= 0, "train.loss_chunk_size", t.loss_chunk_size, "an integer >= 0 (0: whole logits)")
    _need(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "a number >= 0 (0: no clipping)")
    try:
        check_memory_budget(t.compile_memory_budget)
    except ValueError as exc:
        raise ConfigError(f"train.{exc}") from None
    _need(t.mixed_precision in MIXED_PRECISION, "train.mixed_precision", t.mixed_precision,
          " | ".join(MIXED_PRECISION))
    _need(t.attn_backend in ATTN_BACKENDS, "train.attn_backend", t.attn_backend, " | ".join(ATTN_BACKENDS))
    _need(o.name == "adamw", "optim.name", o.name, "adamw")
    _need(o.lr >= 0, "optim.lr", o.lr, "a number >= 0")
    _need(o.eps > 0, "optim.eps", o.eps, "a number > 0")
    _need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    _need(all(k in NO_DECAY_KINDS for k in o.no_decay), "optim.no_decay", list(o.no_decay),
          f"a list of {' | '.join(NO_DECAY_KINDS)}")
    patience = t.early_stop_patience
    _need(patience is None or patience >= 0, "train.early_stop_patience", patience,
          "an integer >= 1 (null or 0: off)")
    _need(not patience or t.eval_every > 0, "train.early_stop_patience", patience,
          "it together with train.eval_every > 0 (it counts evaluations)")
    _need(t.init_from is None or str(t.init_from).strip() != "", "train.init_from", t.init_from,
          "a model folder (export, checkpoint, run or official) or null")
    _need(all(0 <= b < 1 for b in o.betas), "optim.betas", list(o.betas), "two numbers in [0, 1)")
    _need(s.name in SCHEDULES, "scheduler.name", s.name, " | ".join(SCHEDULES))
    _need(s.warmup_steps >= 0, "scheduler.warmup_steps", s.warmup_steps, "an integer >= 0")
    _need(0 <= s.min_lr_ratio <= 1, "scheduler.min_lr_ratio", s.min_lr_ratio, "[0, 1]")
    _need(0 <= s.decay_fraction <= 1, "scheduler.decay_fraction", s.decay_fraction, "[0, 1]")
    _need(0 <= cfg.data.validation_fraction < 1, "data.validation_fraction", cfg.data.validation_fraction,
          "[0, 1) (0: data.files.validation is required)")


def _check_tokenizer(tok: DictConfig) -> None:
    """Each tokenizer kind takes its own keys; a key the kind ignores is refused, not silently dropped."""
    _need(tok.kind in TOKENIZER_DEFAULTS, "tokenizer.kind", tok.kind, "bpe | hf (the tokenizer group)")
    for key, default in TOKENIZER_DEFAULTS[tok.kind].items():
        if OmegaConf.is_missing(tok, key) or tok[key] != default:
            raise ConfigError(f"tokenizer.{key} has no effect with tokenizer={tok.kind}; remove it, or choose "
                              f"tokenizer={'hf' if tok.kind == 'bpe' else 'bpe'}")
    if tok.kind == "hf" and (OmegaConf.is_missing(tok, "name") or not tok.name):
        raise ConfigError("tokenizer=hf needs tokenizer.name=<hub name or local folder>, e.g. tokenizer.name=gpt2")
    if tok.kind == "bpe":
        least = BYTE_ALPHABET + 1
        _need(tok.vocab_size is not None and tok.vocab_size >= least, "tokenizer.vocab_size", tok.vocab_size,
              f"an integer >= {least} (256 byte tokens plus 1 special token)")
        _need(tok.min_frequency >= 1, "tokenizer.min_frequency", tok.min_frequency, "an integer >= 1")


def _check_model(model: DictConfig) -> None:
    """The TransnormerConfig checks (heads dividing the width, one LRPE flag per layer ...), before any data work."""
    from tnl.model import TransnormerConfig

    fields = OmegaConf.to_container(model, resolve=True)
    check_model_fields(fields)
    fields["vocab_size"] = fields.get("vocab_size") or 1 << 16  # sized to the tokenizer later; holds the special ids
    try:
        TransnormerConfig(**fields)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {str(err).removeprefix('TransnormerConfig: ')}; fix the model.* keys") from None


def check_experiment(choice: str | None, known: list[str]) -> None:
    if choice is not None and choice not in known:
        raise ConfigError(f"unknown experiment '{choice}'; known: {', '.join(sorted(known))} (configs/experiment)")


def check_config(cfg: DictConfig) -> None:
    """Every value of a composed `tnl train` config, in one pass that reads no data; raises ConfigError."""
    _check_ranges(cfg)
    _check_tokenizer(cfg.tokenizer)
    _check_model(cfg.model)
    _check_data(cfg.data)  # last: values are named even where the data files are missing


def _check_data(data: DictConfig) -> None:
    """The data group's keys, and that the local files of the train and validation splits exist (no file is read)."""
    from tnl.data import describe_source

    _need(data.kind in ("wikitext", "text"), "data.kind", data.kind, "wikitext | text (the data group)")
    if data.kind == "wikitext":
        _need(data.sample_by == "line", "data.sample_by", data.sample_by,
              "line for WikiText (its files are read line by line); use data=text for other text")
        _need(not data.streaming, "data.streaming", data.streaming, "false for WikiText, which is small")
    for split in ("train", "validation"):
        describe_source(data, split)


class CheckConfig(Callback):
    """Hydra callback: `check_config` (and a known experiment) before the run folder exists; a mistake prints one
    line and exits 2 (TNL_DEBUG=1 raises it with its traceback)."""

    def _check(self, config: DictConfig) -> None:
        from hydra.core.global_hydra import GlobalHydra

        try:
            known = GlobalHydra.instance().config_loader().get_group_options("experiment")
            check_experiment(OmegaConf.select(config, "hydra.runtime.choices.experiment"), known)
            check_config(config)
        except UserError as err:
            if settings.debug():
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)
