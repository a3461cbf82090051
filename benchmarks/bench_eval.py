"""Evaluation throughput (tokens/s) per mode and batch size, next to training steps (forward, backward, AdamW) of
the same model at the largest batch size and eval.max_length tokens per row, with each row's eval / train ratio:

    python -m benchmarks.bench_eval                                  # random-init 385M-size TNL, WT-103 validation
    python -m benchmarks.bench_eval model_path=RUN/checkpoints/step_N bench.batch_sizes=[1,8,32]
    python -m benchmarks.bench_eval bench.preset=tiny bench.num_docs=4 eval.device=cpu   # a quick CPU check
    # the quickstart's final evaluation (window 256, batch 8) against its training, on the CPU:
    python -m benchmarks.bench_eval bench.preset=quickstart bench.vocab_size=4096 bench.num_docs=8 \
        eval.max_length=256 'bench.batch_sizes=[8]' 'bench.modes=[window]' eval.device=cpu +bench.train_steps=5

`+bench.train_steps=N` sets the timed training steps (default 3; 0 skips the training reference).

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
