"""`tnl generate`: text from a checkpoint, run, exported or official model, streamed to the terminal.

    tnl generate model_path=PATH prompt="Once upon a time" [max_new_tokens=128] [temperature=0] ...
    tnl generate model_path=PATH prompt_file=prompts.txt output=out.jsonl      (one prompt per line, batched)
    echo "Once upon a time" | tnl generate model_path=PATH                     (configs/generate.yaml)
"""

from __future__ import annotations

from omegaconf import DictConfig

from . import hydra_entry, run_or_exit


def _task(cfg: DictConfig) -> None:
    from tnl.generate.run import run_generation

    run_or_exit(run_generation, cfg)


def main() -> None:
    hydra_entry(_task, "generate")
