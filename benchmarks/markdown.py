"""Rewrite one table of docs/benchmarks.md in place: the text between `<!-- KEY -->` and `<!-- /KEY -->`.

A benchmark's `--write-md` replaces its own section and nothing else; a section that is not there yet is added at
the end of the `## ` chapter named, or of the file. Numbers are never appended as a log: history is git's.
"""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

from tnl.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def today() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"


def stamp(module: str, packages: tuple[str, ...] = ()) -> str:
    """The lines a GPU table starts with: `python -m MODULE <this run's arguments>`, then the device, torch's and
    `packages`' versions (those importable) and today's date."""
    import torch

    cmd = " ".join([f"python -m {module}", *(shlex.quote(a) for a in sys.argv[1:])])
    versions = [f"torch {torch.__version__}"]
    for name in packages:
        try:
            versions.append(f"{name} {getattr(__import__(name), '__version__', '?')}")
        except ImportError:
            pass
    return f"`{cmd}`\n· {torch.cuda.get_device_name()} · {', '.join(versions)} · {today()}"


def current_section(key: str, path: Path = BENCHMARKS_MD) -> str | None:
    """The text between the markers of `key`, or None."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = f"<!-- {key} -->\n", f"<!-- /{key} -->"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start):j] if j >= 0 else None


def rewrite_section(key: str, body: str, chapter: str | None = None, path: Path = BENCHMARKS_MD) -> None:
    """Put `body` between the markers of `key` in `path`, replacing what was there."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {key} -->\n", f"<!-- /{key} -->"
    block = f"{start}{body.rstrip()}\n{end}"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if j >= 0:
        text = text[:i] + block + text[j + len(end):]
    else:
        heading = f"\n## {chapter}\n" if chapter else None
        at = text.find(heading) if heading else -1
        if at < 0:
            text = text.rstrip() + (f"\n{heading.rstrip()}" if heading else "") + f"\n\n{block}\n"
        else:
            nxt = text.find("\n## ", at + len(heading))
            nxt = len(text) if nxt < 0 else nxt
            text = text[:nxt].rstrip() + f"\n\n{block}\n" + text[nxt:]
    write_text_atomic(path, text)
