"""Fencing tokens: a write that matters carries its writer's lease epoch, and the store refuses an older one.

A replica that lost its lease (paused, cut off from the database, killed mid-write) stops its
singletons before the lease expires, but a process can stall at any instruction. So the
store the singleton writes to keeps the highest epoch that has written (`cluster_fences`), and
each fenced write checks and advances it inside its own transaction: once the new holder has
written, every later write of the old one fails with `FencedOut` and sends nothing.
"""

from __future__ import annotations

from typing import Any, Callable

from tandem.cloud_hub.errors import ConflictError
from tandem.cloud_hub.storage.db import HubDatabase

__all__ = ["FENCE_TABLE", "FencedOut", "Fence"]

FENCE_TABLE = "cluster_fences"

_SCHEMA = f"CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (name TEXT PRIMARY KEY, epoch BIGINT NOT NULL)"


class FencedOut(ConflictError):
    """A newer lease holder has written: this replica's singleton must stop (its write was rolled back)."""


class Fence:
    """The fencing check for one lease `name` in one store; `check(tx)` runs inside the store's transaction."""

    def __init__(self, db: HubDatabase, name: str, epoch: int) -> None:
        self.name, self.epoch = name, epoch
        db.ensure_schema((_SCHEMA,))
        with db.transaction() as tx:
            self.check(tx)  # the new holder claims the store before it acts: the old one is fenced from now on

    def check(self, tx: Any) -> None:
        """Advance the store's epoch to ours, or raise FencedOut when a newer holder has written."""
        tx.execute(
            f"INSERT INTO {FENCE_TABLE} (name, epoch) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
            f"epoch = excluded.epoch WHERE {FENCE_TABLE}.epoch < excluded.epoch",
            [self.name, self.epoch],
        )
        rows = list(tx.query(f"SELECT epoch FROM {FENCE_TABLE} WHERE name = ?", [self.name]))
        current = int(rows[0]["epoch"])
        if current != self.epoch:
            raise FencedOut(
                f"lease {self.name!r}: epoch {current} has written to this store, this replica holds {self.epoch}; "
                "its singletons stop"
            )


def fence_hook(fence: Fence) -> Callable[[Any], None]:
    """The callable a store runs first in each fenced transaction."""
    return fence.check
