"""One agent per data dir: two agents left on the default state folder would share one outbox.

Both would number telemetry windows from the same SQLite outbox and OTA store, so the hub would see
each one's windows as the other's duplicates or gaps: a silent collision. `AgentDataDirLock` holds an
exclusive flock on <data_dir>/agent.lock for the agent's life (protocols/file_lock.py, as the hub does).
"""

from __future__ import annotations

from pathlib import Path

from tandem.edge_agent.errors import ConfigError
from tandem.protocols.file_lock import FileLock

__all__ = ["LOCK_FILENAME", "AgentDataDirLock"]

LOCK_FILENAME = "agent.lock"


class AgentDataDirLock(FileLock):
    """The agent's data-dir lock; a second agent gets a ConfigError naming the holder and the setting."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(Path(data_dir) / LOCK_FILENAME, 0o600)

    def acquire(self) -> "AgentDataDirLock":
        holder = self.try_acquire()
        if holder is not None:
            raise ConfigError(
                f"hard_examples.data_dir: {self.path.parent} is in use by another agent (pid {holder}); give each "
                "agent on this host its own: [hard_examples] data_dir, env TANDEM_AGENT_HARD_EXAMPLES_DATA_DIR "
                "(tandem-agent init writes one per device)"
            )
        return self
