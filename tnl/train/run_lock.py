"""One training run per run folder: an advisory lock (fcntl.flock) on RUN/.lock. The OS releases it when the
process ends, however it ends, so a killed run never leaves its folder locked. The holder writes its pid into the
file, which a refused second run names."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tnl.errors import UserError

LOCK_FILE = ".lock"


class RunLockedError(UserError):
    """Another process is training into the same run folder."""


class RunLock:
    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def try_acquire(self) -> str | None:
        """Take the lock: None when held now, else the one-line reason (naming the holder's pid)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            return f"cannot write into output_dir {self.path.parent} ({err.strerror}); pick a writable output_dir"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return (f"{self.path.parent} is in use by another training run (pid {holder}); wait for it to end or stop "
                    "it, or train into another output_dir")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        """Unlock; the file is left empty (the pid stays only while the run holds it)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None
