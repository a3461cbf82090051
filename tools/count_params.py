"""Print the parameter count of each named model config (configs/model/*.yaml), built on the meta device.

    python -m tools.count_params            # every config
    python -m tools.count_params tnl_7b     # some of them
    python -m tools.count_params tnl_44m --set channel_mixer=mlp --set num_key_value_heads=2   # a variant
"""

from __future__ import annotations

import argparse

import torch
import yaml

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
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model config field (YAML value), e.g. num_key_value_heads=2; repeatable")
    args = parser.parse_args(argv)
    names = args.names or config_names()
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or not field:
            parser.error(f"--set takes FIELD=VALUE, got {item!r}")
        overrides[field] = yaml.safe_load(value)
    configs = {}
    for name in names:
        try:
            configs[name] = load_config(name, **overrides)
        except (TypeError, ValueError) as err:
            parser.error(f"{name}: {err}")
    print(f"{'config':<18}{'mixer':<9}{'kv heads':>9}{'vocab':>8}{'params':>16}{'non-embedding':>16}")
    for name, cfg in configs.items():
        total, emb = count_params(cfg)
        print(f"{name:<18}{cfg.token_mixer:<9}{cfg.num_key_value_heads:>9}{cfg.vocab_size:>8}{total:>16,}"
              f"{total - emb:>16,}  ({total / 1e6:.2f}M)")


if __name__ == "__main__":
    main()
