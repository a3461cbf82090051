"""Train a TNL language model: python train.py experiment=quickstart [key=value ...]"""

import sys

import hydra
from omegaconf import DictConfig

from tnl.train import register_schema

register_schema()


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tnl.cli import run_or_exit
    from tnl.train import train

    with open_dict(cfg):  # in a -m sweep each job gets its own folder (sweep dir / job number)
        cfg.output_dir = HydraConfig.get().runtime.output_dir

    result = run_or_exit(train, cfg)
    if result is None:
        return
    print(f"\nrun folder:  {result['output_dir']}")
    print(f"checkpoint:  {result['checkpoint']}")
    if "eval" in result:
        ev = result["eval"]
        print(f"validation:  token ppl {ev['token_perplexity']:.2f}, word ppl {ev['word_perplexity']:.2f}, "
              f"bits/byte {ev['bits_per_byte']:.4f}  ({result['eval_file']})")
    for plot in result.get("plots", []):
        print(f"plot:        {plot}")
    if "export" in result:
        print(f"HF export:   {result['export']}")


if __name__ == "__main__":
    sys.exit(main())
