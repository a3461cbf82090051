"""The named model configs of configs/model/*.yaml as `TransnormerConfig`s, for tools, benchmarks and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tnl.model import TransnormerConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
BYTE_VOCAB = 256  # a config without a vocab_size (sized to the tokenizer when training) gets this one


def config_names() -> list[str]:
    """Names of the model configs (the yaml files' stems), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name: str, **overrides: Any) -> TransnormerConfig:
    """TransnormerConfig from configs/model/<name>.yaml (a flat mapping of its fields), with `overrides` applied."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no model config {name!r}; the configs are {', '.join(config_names())}")
    fields = yaml.safe_load(path.read_text()) or {}
    if fields.get("vocab_size") is None:  # training sizes it to the tokenizer; tools use the byte-level size
        fields["vocab_size"] = BYTE_VOCAB
    fields.update(overrides)
    return TransnormerConfig(**fields)
