"""Write a folder all at once: build it beside the target, then rename it into place.

A crash mid-export leaves at most a hidden `.NAME.tmp-*` folder, never a half-written NAME; an existing export is
only moved aside (then deleted) once the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import ExportError


def check_target(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another out_dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass overwrite=true to replace it")
    return out


@contextlib.contextmanager
def atomic_folder(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `out_dir`, on error it is removed."""
    out = check_target(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        check_target(out, overwrite)  # it may have been filled meanwhile
        old = out.parent / f".{out.name}.old-{tag}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:  # put the previous export back
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
