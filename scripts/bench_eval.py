"""Evaluation throughput (tokens/s) per mode and batch size, e.g. on a GPU in bf16:

    python scripts/bench_eval.py                                  # random-init 385M-size TNL, WT-103 validation
    python scripts/bench_eval.py model_path=RUN/checkpoints/step_N bench.batch_sizes=[1,8,32]
    python scripts/bench_eval.py bench.preset=tiny bench.num_docs=4 eval.device=cpu   # a quick CPU check

Options: configs/evaluate.yaml (eval.*, data, and its bench.* section).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from tnl.cli import run_or_exit
    from tnl.eval.bench import bench_main

    run_or_exit(bench_main, cfg)


if __name__ == "__main__":
    main()
