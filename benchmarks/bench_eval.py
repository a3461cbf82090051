"""Evaluation throughput (tokens/s) per mode and batch size, e.g. on a GPU in bf16:

    python -m benchmarks.bench_eval                                  # random-init 385M-size TNL, WT-103 validation
    python -m benchmarks.bench_eval model_path=RUN/checkpoints/step_N bench.batch_sizes=[1,8,32]
    python -m benchmarks.bench_eval bench.preset=tiny bench.num_docs=4 eval.device=cpu   # a quick CPU check

Options: configs/evaluate.yaml (eval.*, data, and its bench.* section).
"""

from omegaconf import DictConfig

from tnl.commands import hydra_entry, run_or_exit


def _task(cfg: DictConfig) -> None:
    from tnl.eval.bench import bench_main

    run_or_exit(bench_main, cfg)


def main() -> None:
    hydra_entry(_task, "evaluate")


if __name__ == "__main__":
    main()
