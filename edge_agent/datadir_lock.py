"""One agent per data dir: two agents left on the default state folder would share one outbox.

Both would number telemetry windows from the same SQLite outbox and OTA store, so the hub would see
each one's windows as the other's duplicates or gaps: a silent collision. `AgentDataDirLock` takes an
exclusive flock on <data_dir>/agent.lock for the agent's life; the kernel drops it when the process
dies (even on SIGKILL), so a crashed agent never blocks its own restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tandem.edge_agent.errors import ConfigError

__all__ = ["LOCK_FILENAME", "AgentDataDirLock"]

LOCK_FILENAME = "agent.lock"


class AgentDataDirLock:
    """An exclusive, non-blocking flock on the agent's data dir, held until `release`."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> "AgentDataDirLock":
        """Take the lock, or raise ConfigError naming the holder's pid and the setting to change."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"hard_examples.data_dir: {self.path.parent} is in use by another agent (pid {holder}); give each "
                "agent on this host its own: [hard_examples] data_dir, env TANDEM_AGENT_HARD_EXAMPLES_DATA_DIR "
                "(tandem-agent init writes one per device)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

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
