"""Build the tokenizer and token caches ahead of training: python scripts/prepare_data.py <train.py overrides>"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tnl.train import register_schema  # noqa: E402

register_schema()


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from tnl.cli import run_or_exit
    from tnl.data import prepare_split, prepare_tokenizer

    def prepare() -> None:
        tokenizer = prepare_tokenizer(cfg)
        for split in ("train", "validation", "test"):
            if not (cfg.data.files or {}).get(split) and cfg.data.get("path"):
                continue
            arr = prepare_split(cfg.data, tokenizer, split)
            print(f"{split:>10}: {len(arr.tokens):>12,} tokens  {len(arr.doc_starts):>8,} documents  {arr.path}")

    run_or_exit(prepare)


if __name__ == "__main__":
    main()
