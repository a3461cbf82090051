"""`tnl evaluate`: document-level perplexity of a checkpoint, run or exported model.

    tnl evaluate model_path=PATH [eval.split=test] [eval.mode=stream] ...      (configs/evaluate.yaml)
"""

from __future__ import annotations

from omegaconf import DictConfig

from . import hydra_entry, run_or_exit


def _task(cfg: DictConfig) -> None:
    from tnl.eval import run_evaluation

    run_or_exit(run_evaluation, cfg)


def main() -> None:
    hydra_entry(_task, "evaluate")
