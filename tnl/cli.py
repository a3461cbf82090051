"""`tnl`, the command line: `tnl <command> [Hydra overrides]`, e.g. `tnl train experiment=quickstart`.

Each command reads one config of configs/ (see `tnl <command> --help`); a user's mistake prints one line and exits 2
(TNL_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import importlib
import sys

from tnl.commands import run_or_exit

__all__ = ["COMMANDS", "main", "run_or_exit"]

# name -> (module with main(), what it does)
COMMANDS = {
    "train": ("tnl.commands.train", "train a model, then evaluate and export it (configs/config.yaml)"),
    "evaluate": ("tnl.commands.evaluate", "document-level perplexity of a model (configs/evaluate.yaml)"),
    "export": ("tnl.commands.export", "Hugging Face or OpenNLPLab export of a checkpoint (configs/export.yaml)"),
    "prepare-data": ("tnl.commands.prepare_data", "build the tokenizer and token caches (configs/config.yaml)"),
}
ALIASES = {"prepare_data": "prepare-data"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: tnl <command> [key=value ...]   (Hydra overrides; tnl <command> --help lists the config)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    name = ALIASES.get(argv[0], argv[0])
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"tnl {name}", *argv[1:]]  # Hydra parses sys.argv
    module.main()


if __name__ == "__main__":
    main()
