"""`tnl`, the command line: `tnl <command> [Hydra overrides]`, e.g. `tnl train experiment=quickstart`.

Each command reads one config of configs/ (see `tnl <command> --help`); a user's mistake prints one line and exits 2
(TNL_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import faulthandler
import importlib
import re
import signal
import sys

from tnl.commands import run_or_exit

__all__ = ["COMMANDS", "main", "run_or_exit"]

# name -> (module with main(), what it does)
COMMANDS = {
    "train": ("tnl.commands.train", "train a model, then evaluate and export it (configs/config.yaml)"),
    "evaluate": ("tnl.commands.evaluate", "document-level perplexity of a model (configs/evaluate.yaml)"),
    "export": ("tnl.commands.export", "Hugging Face or OpenNLPLab export of a checkpoint (configs/export.yaml)"),
    "generate": ("tnl.commands.generate", "text from a model, streamed to the terminal (configs/generate.yaml)"),
    "prepare-data": ("tnl.commands.prepare_data", "build the tokenizer and token caches (configs/config.yaml)"),
}
ALIASES = {"prepare_data": "prepare-data"}
CONFIG_NAMES = {"train": "config", "prepare-data": "config"}  # the others read configs/<command>.yaml


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: tnl <command> [key=value ...]   (Hydra overrides; tnl <command> --help lists the config)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def _config_keys(text: str) -> list[str]:
    """A config file's own lines, comments kept, without its `defaults:` list and `hydra:` section."""
    lines, skipping = [], False
    for line in text.splitlines():
        if re.match(r"^(defaults|hydra):", line):
            skipping = True
            continue
        if skipping and (not line.strip() or line[0] in " -#"):
            continue
        skipping = False
        lines.append(line)
    return lines


def _groups(text: str, config_dir) -> list[str]:
    """`group=default  (options)` for each config group in the file's defaults list."""
    out = []
    for m in re.finditer(r"^\s*-\s*(?:optional\s+)?(\w+):\s*(\S+)", text, re.MULTILINE):
        group, default = m.groups()
        options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        if options:
            out.append(f"  {group}={default}  ({', '.join(options)})")
    return out


def command_help(name: str) -> str:
    """What `tnl NAME --help` prints before Hydra's listing: the command's usage, its config groups and main keys
    with their comments (from the config file itself, so the help never drifts from the defaults)."""
    from tnl.commands import CONFIG_DIR

    module = importlib.import_module(COMMANDS[name][0])
    parts = [(module.__doc__ or COMMANDS[name][1]).strip(), ""]
    config = CONFIG_DIR / f"{CONFIG_NAMES.get(name, name)}.yaml"
    if config.is_file():
        text = config.read_text(encoding="utf-8")
        groups = _groups(text, CONFIG_DIR)
        if groups:
            parts += ["config groups (group=option):", *groups, ""]
        parts += [f"main keys ({config.relative_to(CONFIG_DIR.parent)}; set any key of the config below as "
                  "key=value):", *("  " + line for line in _config_keys(text)), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    name = ALIASES.get(argv[0], argv[0])
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: every thread's stack on stderr, to see where a run is stuck
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    module = importlib.import_module(COMMANDS[name][0])
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(command_help(name), flush=True)  # then Hydra's own --help: the composed config
    sys.argv = [f"tnl {name}", *argv[1:]]  # Hydra parses sys.argv
    module.main()


if __name__ == "__main__":
    main()
