"""A lease row in the hub's database: which replica runs the fleet's singletons, until when, in which epoch.

Portable SQL only (`?`, INSERT ... ON CONFLICT, DOUBLE PRECISION times: PostgreSQL's REAL is
4 bytes, too coarse for unix seconds), so the same table works on SQLite and on PostgreSQL. A
lease is taken when it is free or expired, and each take bumps its epoch: the epoch is the
fencing token that writes which matter carry (cloud_hub/cluster/fence.py).
Expiry is judged on the callers' wall clocks: replicas on several hosts need them in step (NTP),
well within the lease's time to live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tandem.cloud_hub.storage.db import HubDatabase

__all__ = ["LEASE_TABLE", "LeaseState", "LeaseTable"]

LEASE_TABLE = "cluster_leases"

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {LEASE_TABLE} ("
    "name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, "
    "acquired_at DOUBLE PRECISION NOT NULL, renewed_at DOUBLE PRECISION NOT NULL, holder_url TEXT)"
)


@dataclass(frozen=True)
class LeaseState:
    """One lease row as read: who holds it, in which epoch, until when (unix seconds)."""

    name: str
    holder: str
    epoch: int
    expires_at: float
    acquired_at: float
    renewed_at: float
    holder_url: str | None

    def held_by(self, holder: str, now: float) -> bool:
        return self.holder == holder and self.expires_at > now


def _changed(result: Any) -> int:
    """Rows a statement changed, whether the transaction hands back a count or a DB-API cursor."""
    return result if isinstance(result, int) else int(result.rowcount)


class LeaseTable:
    """Take, renew, release and read named leases in one store's database (its own table, made if missing)."""

    def __init__(self, db: HubDatabase) -> None:
        self.db = db
        db.ensure_schema((_SCHEMA,))

    def try_acquire(self, name: str, holder: str, ttl_s: float, now: float, url: str | None = None) -> LeaseState:
        """Take `name` for `holder` if it is free, expired or last held by `holder` (a restarted replica); the
        lease as it stands afterwards. Every take is a new term: the epoch goes up by one."""
        with self.db.transaction() as tx:
            tx.execute(
                f"INSERT INTO {LEASE_TABLE} (name, holder, epoch, expires_at, acquired_at, renewed_at, holder_url) "
                "VALUES (?, ?, 1, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                f"epoch = {LEASE_TABLE}.epoch + 1, holder = excluded.holder, expires_at = excluded.expires_at, "
                "acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, holder_url = excluded.holder_url "
                f"WHERE {LEASE_TABLE}.expires_at <= ? OR {LEASE_TABLE}.holder = excluded.holder",
                [name, holder, now + ttl_s, now, now, url, now],
            )
            rows = list(tx.query(f"SELECT * FROM {LEASE_TABLE} WHERE name = ?", [name]))
        return _state(rows[0])

    def renew(self, name: str, holder: str, epoch: int, ttl_s: float, now: float) -> bool:
        """Extend our lease to now + ttl_s; False when it is no longer ours in this epoch (or already expired)."""
        with self.db.transaction() as tx:
            n = _changed(
                tx.execute(
                    f"UPDATE {LEASE_TABLE} SET expires_at = ?, renewed_at = ? "
                    "WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > ?",
                    [now + ttl_s, now, name, holder, epoch, now],
                )
            )
        return n == 1

    def release(self, name: str, holder: str, epoch: int) -> bool:
        """Give the lease up at once (a clean stop), so another replica need not wait for it to expire."""
        with self.db.transaction() as tx:
            n = _changed(
                tx.execute(
                    f"UPDATE {LEASE_TABLE} SET expires_at = 0 WHERE name = ? AND holder = ? AND epoch = ?",
                    [name, holder, epoch],
                )
            )
        return n == 1

    def get(self, name: str) -> LeaseState | None:
        rows = self.db.query(f"SELECT * FROM {LEASE_TABLE} WHERE name = ?", [name])
        return _state(rows[0]) if rows else None


def _state(row: dict[str, Any]) -> LeaseState:
    return LeaseState(
        name=str(row["name"]),
        holder=str(row["holder"]),
        epoch=int(row["epoch"]),
        expires_at=float(row["expires_at"]),
        acquired_at=float(row["acquired_at"]),
        renewed_at=float(row["renewed_at"]),
        holder_url=row["holder_url"],
    )
