"""Document-level perplexity of a checkpoint or exported model: python scripts/evaluate.py model_path=PATH [overrides]

See configs/evaluate.yaml for the options (eval.split, eval.mode, eval.max_length, ...).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from tnl.cli import run_or_exit
    from tnl.eval.run import run_evaluation

    run_or_exit(run_evaluation, cfg)


if __name__ == "__main__":
    main()
