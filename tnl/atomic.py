"""Write files and folders all at once: build them beside the target, then rename them into place.

A crash mid-write leaves at most a hidden temporary file or folder beside the target (`.NAME.tmp-*`), never a
half-written target. Standard library only: the kernels' tuning cache uses it, and an exported model carries a copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` in one rename (parent folders are created)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` in one rename (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_folder(target: str | os.PathLike) -> Path:
    """A new empty hidden folder beside `target` (`.NAME.tmp-PID-RANDOM`), to be published with `publish_folder`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish_folder(tmp: str | os.PathLike, target: str | os.PathLike, *, replace: bool) -> bool:
    """Rename the finished folder `tmp` to `target`; True when it was published.

    An existing `target` is moved aside and deleted once `tmp` is in place (`replace=True`), or kept, with `tmp`
    deleted (`replace=False`: a cache entry another process finished first holds the same content).
    """
    tmp, target = Path(tmp), Path(target)
    if target.exists() and not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:  # put the previous folder back
            os.replace(old, target)
        elif target.exists():  # another process published the same target just now: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True


def check_target(out_dir: str | os.PathLike, overwrite: bool, error: type[Exception] = UserError,
                 replaceable: Callable[[Path], str | None] | None = None) -> Path:
    """The absolute path of `out_dir` if a folder may be written there, else `error` (one line, with the fix).

    `replaceable(folder)` says why a non-empty folder must not be replaced even with `overwrite` (None: it may be).
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise error(f"{out} exists and is not a folder; choose another out_dir")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise error(f"{out} exists and is not empty; pass overwrite=true to replace it")
        reason = replaceable(out) if replaceable is not None else None
        if reason:
            raise error(reason)
    return out


@contextlib.contextmanager
def atomic_folder(out_dir: str | os.PathLike, overwrite: bool = False, error: type[Exception] = UserError,
                  replaceable: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `out_dir`, on error it is removed.

    A non-empty `out_dir` needs `overwrite=True` (else `error`) and must pass `replaceable` (see `check_target`);
    the previous folder is only moved aside (then deleted) once the new one is complete.
    """
    out = check_target(out_dir, overwrite, error, replaceable)
    try:
        tmp = temp_folder(out)
    except OSError as err:  # a read-only parent, or a file where a parent folder should be
        blocker = next((a for a in out.parents if a.exists()), None)
        why = f"{blocker} is a file, not a folder" if blocker and not blocker.is_dir() else \
            f"{type(err).__name__}: {err.strerror or err}"
        raise error(f"cannot write {out} ({why}); choose a writable folder") from None
    try:
        yield tmp
        if out.exists():
            check_target(out, overwrite, error, replaceable)  # it may have been filled meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_folder(tmp, out, replace=True)


@contextlib.contextmanager
def cache_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes the cache entry `target` on success (removed on error).

    If another process published `target` meanwhile, theirs is kept: both built the same content.
    """
    tmp = temp_folder(target)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_folder(tmp, target, replace=False)
