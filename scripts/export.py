"""Export a checkpoint for Hugging Face (or OpenNLPLab's layout), optionally pushing it to the hub.

python scripts/export.py checkpoint=RUN/checkpoints/step_N out_dir=DIR [format=hf|official] [push_to_hub=REPO]
    [overwrite=true]    (see configs/export.yaml)
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from tnl.cli import run_or_exit
    from tnl.export.cli import run_export

    run_or_exit(run_export, cfg)


if __name__ == "__main__":
    main()
