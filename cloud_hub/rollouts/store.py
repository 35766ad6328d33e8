"""Rollouts in the hub's storage: the controller's state per rollout, every step as an event, status dedupe.

Its own database file next to the hub's (data_dir/rollouts.sqlite), or the `rollouts` schema
on PostgreSQL, migrated with the hub's mechanism (`cloud_hub.storage.db`), so its schema
evolves apart from others'. `save` writes a rollout's state and its events in one transaction.
"""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path
from typing import Any

from tandem.cloud_hub.errors import NotFoundError
from tandem.cloud_hub.rollouts.controller import Event, Rollout
from tandem.cloud_hub.storage.db import HubDatabase, Migration, insert_many, is_postgres_url, open_database, upsert_sql

ROLLOUTS_DB_FILENAME = "rollouts.sqlite"
ROLLOUTS_SCHEMA = "rollouts"  # on PostgreSQL

ROLLOUT_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "rollouts, rollout events, ota status dedupe",
        (
            """CREATE TABLE rollouts (
            rollout_id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            doc TEXT NOT NULL)""",
            "CREATE INDEX rollouts_status ON rollouts (status)",
            """CREATE TABLE rollout_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rollout_id TEXT NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            device_id TEXT,
            detail TEXT NOT NULL)""",
            "CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id)",
            """CREATE TABLE ota_status_seen (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (device_id, seq))""",
        ),
    ),
)


class RolloutStore:
    def __init__(self, db: HubDatabase) -> None:
        self.db = db

    @classmethod
    def open(cls, target: str | Path) -> "RolloutStore":
        """A postgresql:// URL (schema `rollouts`), a SQLite file, or a directory (<dir>/rollouts.sqlite)."""
        if is_postgres_url(target):
            return cls(open_database(target, ROLLOUT_MIGRATIONS, schema=ROLLOUTS_SCHEMA))
        path = Path(target)
        if path.is_dir() or not path.suffix:
            path = path / ROLLOUTS_DB_FILENAME
        return cls(open_database(path, ROLLOUT_MIGRATIONS))

    def close(self) -> None:
        self.db.close()

    def save(self, r: Rollout, events: list[Event] = (), now: float | None = None) -> None:  # type: ignore[assignment]
        """Write the rollout's state and its new events in one transaction."""
        now = time.time() if now is None else now
        row = {
            "rollout_id": r.rollout_id,
            "model": r.model,
            "version": r.version,
            "status": r.status,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "doc": json.dumps(r.to_dict(), sort_keys=True),
        }
        with self.db.transaction() as tx:
            tx.execute(upsert_sql("rollouts", tuple(row), ("rollout_id",)), list(row.values()))
            if events:
                insert_many(
                    tx,
                    "rollout_events",
                    [
                        {
                            "rollout_id": r.rollout_id,
                            "at": now,
                            "kind": e.kind,
                            "device_id": e.device_id,
                            "detail": json.dumps(e.detail, sort_keys=True),
                        }
                        for e in events
                    ],
                )

    def targets(self, device_id: str, model: str, version: str) -> bool:
        """Whether a rollout of `model` `version` includes `device_id` (what a device token may download)."""
        rows = self.db.query("SELECT doc FROM rollouts WHERE model=? AND version=?", [model, version])
        return any(d.get("device_id") == device_id for r in rows for d in json.loads(r["doc"]).get("devices", []))

    def get(self, rollout_id: str) -> Rollout:
        rows = self.db.query("SELECT doc FROM rollouts WHERE rollout_id=?", [rollout_id])
        if not rows:
            raise NotFoundError(f"rollout {rollout_id!r} does not exist (see GET /v1/rollouts)")
        return Rollout.from_dict(json.loads(rows[0]["doc"]))

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Rollout], int]:
        where, params = ("WHERE status=?", [status]) if status else ("", [])
        total = self.db.query(f"SELECT COUNT(*) AS n FROM rollouts {where}", params)[0]["n"]
        rows = self.db.query(
            f"SELECT doc FROM rollouts {where} ORDER BY created_at DESC, rollout_id LIMIT ? OFFSET ?",
            params + [limit, offset],
        )
        return [Rollout.from_dict(json.loads(r["doc"])) for r in rows], total

    def active(self) -> builtins.list[Rollout]:
        """Rollouts that may still send commands (including completed ones with devices to catch up)."""
        rows = self.db.query(
            "SELECT doc FROM rollouts WHERE status IN ('running','paused','halted','completed','rolled_back')"
        )
        return [Rollout.from_dict(json.loads(r["doc"])) for r in rows]

    def events(self, rollout_id: str, limit: int = 200, after_id: int = 0) -> builtins.list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT id, at, kind, device_id, detail FROM rollout_events WHERE rollout_id=? AND id>? "
            "ORDER BY id LIMIT ?",
            [rollout_id, after_id, limit],
        )
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows

    def recent_events(self, rollout_id: str, limit: int = 50) -> builtins.list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT * FROM (SELECT id, at, kind, device_id, detail FROM rollout_events "
            "WHERE rollout_id=? ORDER BY id DESC LIMIT ?) AS recent ORDER BY id",
            [rollout_id, limit],
        )
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows

    def first_seen(self, device_id: str, seq: int) -> bool:
        """True the first time (device, seq) is seen: statuses are delivered at least once."""
        added = self.db.execute(
            "INSERT INTO ota_status_seen (device_id, seq) VALUES (?, ?) ON CONFLICT DO NOTHING", [device_id, seq]
        )
        return added == 1
