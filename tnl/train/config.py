"""The structured config schema, registered in Hydra's ConfigStore.

The defaults list of configs/config.yaml starts with `schema`, so every group file is checked
against these dataclasses: a misspelt key or a wrong type fails at start with Hydra's message.
The model group stays a free mapping of TransnormerConfig fields, checked in `check_model_fields`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from tnl.errors import UserError


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
    compile: bool = False
    # with compile: fraction of the saved activations the partitioner may keep (< 1 recomputes cheap ops)
    compile_memory_budget: float = 1.0
    # with compile: recompute pointwise results (SiLU(q), the gated norm, the SGLU product) in backward instead of
    # keeping them (tnl.train.compile; tnl_385m: 37.4 -> 25.6 KB saved per token and block)
    compile_recompute_pointwise: bool = True
    activation_checkpointing: bool = False
    loss_chunk_size: int = 0  # > 0: fused linear cross-entropy over chunks of this many tokens
    attn_backend: str = "auto"  # auto | triton | torch: the model's attn_backend, where the model group leaves it auto
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


def register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=TNLConfig)


def check_model_fields(model_cfg: dict[str, Any]) -> None:
    """Model keys must be TransnormerConfig fields: a typo would otherwise be silently stored and ignored."""
    from tnl.model import TransnormerConfig

    known = set(TransnormerConfig().to_dict())
    unknown = sorted(set(model_cfg) - known)
    if unknown:
        raise UserError(f"unknown model field(s) {unknown}; see configs/model/*.yaml for the valid names")
