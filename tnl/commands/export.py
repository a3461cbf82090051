"""`tnl export`: a checkpoint (or any model folder tnl loads) as a self-contained Hugging Face folder or in
OpenNLPLab's layout, optionally pushed to the hub.

    tnl export checkpoint=RUN/checkpoints/step_N out_dir=DIR [format=hf|official] [push_to_hub=REPO]
        [overwrite=true]      (configs/export.yaml)
"""

from __future__ import annotations

from omegaconf import DictConfig

from . import hydra_entry, run_or_exit


def _task(cfg: DictConfig) -> None:
    from tnl.export.run import run_export

    run_or_exit(run_export, cfg)


def main() -> None:
    hydra_entry(_task, "export")
