"""`tnl prepare-data`: build the tokenizer and token caches ahead of training, with `tnl train`'s overrides.

    tnl prepare-data experiment=quickstart [key=value ...]      (configs/config.yaml)
"""

from __future__ import annotations

from omegaconf import DictConfig

from tnl.train import register_schema

from . import hydra_entry, run_or_exit


def prepare(cfg: DictConfig) -> None:
    """The tokenizer and the token caches of every configured split: train and validation as `tnl train` builds
    them (validation held out of the train text where `data.validation_fraction` says so), and test where
    configured."""
    from tnl.data import configured_splits, prepare_split, prepare_tokenizer

    tokenizer = prepare_tokenizer(cfg)
    for split in configured_splits(cfg.data):
        arr = prepare_split(cfg.data, tokenizer, split)
        print(f"{split:>10}: {len(arr.tokens):>12,} tokens  {len(arr.doc_starts):>8,} documents  {arr.path}")


def _task(cfg: DictConfig) -> None:
    run_or_exit(prepare, cfg)


def main() -> None:
    register_schema()
    hydra_entry(_task, "config")
