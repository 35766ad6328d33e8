"""A non-blocking flock on one file, held for a process's life: one writer per data dir, or several sharers.

The hub (cloud_hub/storage/datadir.py) and the agent (edge_agent/datadir_lock.py) each keep one process
per data dir with it and say in their own words who holds it; hub replicas share the hub's lock
(`try_acquire_shared`) so they coexist while a plain hub and a replica still refuse each other. The kernel
drops the lock when the process dies (even on SIGKILL), so a crashed process never blocks its own
restart. Per host only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["FileLock"]


class FileLock:
    """`try_acquire` takes the lock exclusively, `try_acquire_shared` shares it; each names the holder that refused.

    Whoever finds the file unlocked writes its pid (and `note`) into it, so whoever is refused later can
    say which process holds the lock. `alone`: no other process held the lock when ours was taken.
    """

    def __init__(self, path: str | Path, mode: int = 0o600, note: str = "") -> None:
        self.path = Path(path)
        self.mode = mode
        self.note = note
        self.alone = False
        self._fd: int | None = None

    def try_acquire(self) -> str | None:
        """None once the lock is ours alone; otherwise the pid the holder wrote ("unknown" if none)."""
        fd = self._open()
        if not self._flock(fd, fcntl.LOCK_EX):
            return self._refused(fd)
        self._write_pid(fd)
        self._fd, self.alone = fd, True
        return None

    def try_acquire_shared(self) -> str | None:
        """None once we share the lock (`alone` if nobody else held it); otherwise the exclusive holder's pid."""
        fd = self._open()
        alone = self._flock(fd, fcntl.LOCK_EX)  # first in: then our pid, not a departed sharer's, is in the file
        if alone:
            self._write_pid(fd)
        # From exclusive (alone) or nothing to shared; a process holding it exclusively refuses us.
        if not self._flock(fd, fcntl.LOCK_SH):
            return self._refused(fd)
        self._fd, self.alone = fd, alone
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
                self.alone = False

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)

    @staticmethod
    def _flock(fd: int, operation: int) -> bool:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except BaseException:
            os.close(fd)
            raise
        return True

    @staticmethod
    def _refused(fd: int) -> str:
        try:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)

    def _write_pid(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}{self.note}\n".encode(), 0)
