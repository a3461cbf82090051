"""Print the parameter count of each named model config (configs/model/*.yaml), built on the meta device.

    python -m tools.count_params            # every config
    python -m tools.count_params tnl_7b     # some of them
"""

from __future__ import annotations

import argparse

import torch

from tnl.model import TransnormerConfig, TransnormerForCausalLM

from .model_configs import config_names, load_config


def count_params(config: TransnormerConfig) -> tuple[int, int]:
    """(total, embedding) unique parameters; the tied LM head counts once. Meta device: no memory, no init cost."""
    with torch.device("meta"):
        model = TransnormerForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    return total, model.model.embed_tokens.weight.numel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="config names (default: all in configs/model)")
    args = parser.parse_args(argv)
    names = args.names or config_names()
    print(f"{'config':<18}{'mixer':<9}{'vocab':>8}{'params':>16}{'non-embedding':>16}")
    for name in names:
        cfg = load_config(name)
        total, emb = count_params(cfg)
        print(f"{name:<18}{cfg.token_mixer:<9}{cfg.vocab_size:>8}{total:>16,}{total - emb:>16,}  ({total / 1e6:.2f}M)")


if __name__ == "__main__":
    main()
