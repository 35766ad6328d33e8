"""An exclusive, non-blocking flock on one file, held for a process's life: one writer per data dir.

The hub (cloud_hub/storage/datadir.py) and the agent (edge_agent/datadir_lock.py) each keep one process
per data dir with it and say in their own words who holds it. The kernel drops the lock when the process
dies (even on SIGKILL), so a crashed process never blocks its own restart. Per host only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["ExclusiveFileLock"]


class ExclusiveFileLock:
    """`try_acquire` takes the lock and writes our pid into the file, or names the holder's pid."""

    def __init__(self, path: str | Path, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.mode = mode
        self._fd: int | None = None

    def try_acquire(self) -> str | None:
        """None once the lock is ours; otherwise the pid the holder wrote ("unknown" if none)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock; safe to call twice."""
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
