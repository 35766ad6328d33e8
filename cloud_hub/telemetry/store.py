"""Telemetry and drift-alert tables in the hub's telemetry database (its own SQLite file).

Time filters, orders and buckets use `received_at`, the hub's clock (the device's start/end
times are kept beside it): a device whose clock is an hour off is neither hidden from `since`
nor filed into the past. Windows are stored idempotently on (device_id, sequence): INSERT ... ON CONFLICT
DO NOTHING, so an MQTT redelivery or an agent resending after a crash changes nothing. On SQLite the
file is separate from the hub's registry DB so the high-rate ingest never waits on (or
blocks) the console's writes; on PostgreSQL it is the `telemetry` schema. Either way it uses
the hub's migration mechanism. SQLite runs synchronous=FULL: the hub acknowledges a window to
the broker only after its batch commits, so a commit must survive a power cut; one fsync per batch is cheap.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tandem.cloud_hub.storage.db import HubDatabase, Migration, is_postgres_url, open_database
from tandem.cloud_hub.telemetry.rollup_store import ROLLUP_SCHEMA
from tandem.protocols.telemetry_codec import TelemetryWindow

log = logging.getLogger(__name__)

TELEMETRY_DB_FILENAME = "telemetry.sqlite"
TELEMETRY_SCHEMA = "telemetry"  # on PostgreSQL

_PORTABLE: tuple[Migration, ...] = (
    Migration(
        1,
        "telemetry windows, drift alerts",
        (
            """CREATE TABLE telemetry_windows (
            device_id TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            profile TEXT NOT NULL,
            cohort TEXT NOT NULL,
            start_unix REAL NOT NULL,
            end_unix REAL NOT NULL,
            received_at REAL NOT NULL,
            n_edge INTEGER NOT NULL,
            n_cloud INTEGER NOT NULL,
            n_degraded INTEGER NOT NULL,
            n_error INTEGER NOT NULL,
            samples INTEGER NOT NULL,
            latency_sum_ms REAL NOT NULL,
            latency_max_ms REAL NOT NULL,
            outbox_dropped_total INTEGER NOT NULL,
            payload BLOB NOT NULL,
            PRIMARY KEY (device_id, sequence)) WITHOUT ROWID""",
            "CREATE INDEX telemetry_windows_model ON telemetry_windows (model_name, model_version, end_unix)",
            "CREATE INDEX telemetry_windows_end ON telemetry_windows (end_unix)",
            """CREATE TABLE drift_alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            cohort TEXT NOT NULL,
            signal TEXT NOT NULL,
            state TEXT NOT NULL,
            opened_at REAL NOT NULL,
            closed_at REAL,
            open_stats TEXT NOT NULL,
            last_stats TEXT NOT NULL)""",
            "CREATE INDEX drift_alerts_state ON drift_alerts (state, model_name, model_version)",
        ),
    ),
    # Hubs before this migration created these on open (IF NOT EXISTS): here `tandem-hub check` and the
    # schema version know them. Filters, orders and buckets use the hub's receipt time.
    Migration(
        2,
        "receipt-time indexes, rollup tables",
        (
            "CREATE INDEX IF NOT EXISTS telemetry_windows_received ON telemetry_windows (received_at)",
            "CREATE INDEX IF NOT EXISTS telemetry_windows_model_received ON telemetry_windows "
            "(model_name, model_version, received_at)",
            *ROLLUP_SCHEMA,
        ),
    ),
    # The quality gate's per-device figures move into the device rollups (they outlive raw windows). Three
    # indexes go: two on end_unix that no query uses (time filters read received_at) and (model, version,
    # received_at), which only the raw per-model series used: raw windows are kept minutes now, and
    # received_at alone finds them. Together they were ~25% of a stored raw window.
    Migration(
        3,
        "device rollups keep quality-gate figures; three raw-window indexes dropped",
        (
            "ALTER TABLE telemetry_device_rollups ADD COLUMN quality BLOB NOT NULL DEFAULT ''",
            "DROP INDEX IF EXISTS telemetry_windows_model",
            "DROP INDEX IF EXISTS telemetry_windows_end",
            "DROP INDEX IF EXISTS telemetry_windows_model_received",
        ),
    ),
)

# PostgreSQL only (SQLite stores every integer in as few bytes as it needs): the dialect maps INTEGER to
# BIGINT, which per-window and per-device counts never need; 4-byte columns cut ~7% of a raw window and ~13%
# of a device rollup row (bench/telemetry_storage.py). Cohort sample counts stay 8 bytes (a big cohort's
# hour passes 2**31). Index fillfactor 100 where keys only grow (receipt time, bucket): pages split at the
# right edge are never revisited. Written as `INT`, which the dialect leaves alone.
_PG_COMPACT = (
    "ALTER TABLE telemetry_windows ALTER COLUMN n_edge TYPE INT, ALTER COLUMN n_cloud TYPE INT, "
    "ALTER COLUMN n_degraded TYPE INT, ALTER COLUMN n_error TYPE INT, ALTER COLUMN samples TYPE INT, "
    "ALTER COLUMN outbox_dropped_total TYPE INT",
    "ALTER TABLE telemetry_device_rollups ALTER COLUMN res TYPE INT, ALTER COLUMN windows TYPE INT, "
    "ALTER COLUMN edge TYPE INT, ALTER COLUMN cloud TYPE INT, ALTER COLUMN edge_degraded TYPE INT, "
    "ALTER COLUMN error TYPE INT, ALTER COLUMN samples TYPE INT, ALTER COLUMN outbox_dropped_total TYPE INT",
    "ALTER TABLE telemetry_cohort_rollups ALTER COLUMN res TYPE INT, ALTER COLUMN windows TYPE INT",
    "ALTER INDEX telemetry_windows_received SET (fillfactor = 100)",
    "ALTER INDEX telemetry_device_rollups_time SET (fillfactor = 100)",
    "ALTER INDEX telemetry_cohort_rollups_time SET (fillfactor = 100)",
)
_COMPACT_NAME = "PostgreSQL: 4-byte counts, fillfactor 100 on append-only indexes"
TELEMETRY_MIGRATIONS: tuple[Migration, ...] = (*_PORTABLE, Migration(4, _COMPACT_NAME, ()))  # SQLite's
TELEMETRY_MIGRATIONS_POSTGRES: tuple[Migration, ...] = (*_PORTABLE, Migration(4, _COMPACT_NAME, _PG_COMPACT))


@dataclass(frozen=True)
class StoredWindow:
    window: TelemetryWindow
    payload: bytes
    cohort: str
    received_at: float


class TelemetryStore:
    """Reads and writes the telemetry tables; thread-safe through HubDatabase's lock."""

    def __init__(self, db: HubDatabase) -> None:
        self.db = db

    @classmethod
    def open(cls, target: str | Path) -> "TelemetryStore":
        """Open (creating and migrating) a telemetry DB: a postgresql:// URL (schema `telemetry`), a SQLite
        file, or a directory (<dir>/telemetry.sqlite)."""
        if is_postgres_url(target):
            db = open_database(target, TELEMETRY_MIGRATIONS_POSTGRES, schema=TELEMETRY_SCHEMA, durable=True)
        else:
            path = Path(target)
            if path.is_dir() or not path.suffix:
                path = path / TELEMETRY_DB_FILENAME
            db = open_database(path, TELEMETRY_MIGRATIONS, durable=True)
        return cls(db)

    def close(self) -> None:
        self.db.close()

    # -- windows ------------------------------------------------------------------------

    def insert_windows(self, items: Sequence[StoredWindow]) -> list[bool]:
        """Store a batch in one transaction; True for each window that was new."""
        new: list[bool] = []
        with self.db.transaction() as tx:
            for item in items:
                w, r = item.window, item.window.requests
                changed = tx.execute(
                    "INSERT INTO telemetry_windows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    [
                        w.device_id,
                        w.sequence,
                        w.model_name,
                        w.model_version,
                        w.profile,
                        item.cohort,
                        w.start_unix,
                        w.end_unix,
                        item.received_at,
                        r.edge,
                        r.cloud,
                        r.edge_degraded,
                        r.error,
                        w.samples,
                        w.latency_sum_ms,
                        w.latency_max_ms,
                        w.outbox_dropped_total,
                        item.payload,
                    ],
                )
                new.append(changed == 1)
        return new

    def device_windows(
        self, device_id: str, since: float = 0.0, until: float | None = None, limit: int = 500, offset: int = 0
    ) -> list[dict[str, Any]]:
        """One device's windows, oldest first (a per-device time series)."""
        rows = self.db.query(
            f"SELECT {_SUMMARY_COLUMNS} FROM telemetry_windows WHERE device_id=? AND received_at>=? AND received_at<=? "
            "ORDER BY sequence LIMIT ? OFFSET ?",
            [device_id, since, until if until is not None else 1e18, limit, offset],
        )
        for row in rows:
            row["cohort"] = json.loads(row["cohort"])  # an object, as list_windows gives it
        return rows

    def list_windows(
        self,
        device_id: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        since: float = 0.0,
        until: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Windows matching the filters, newest first, and how many match in all."""
        clauses = ["received_at>=?", "received_at<=?"]
        params: list[object] = [since, until if until is not None else 1e18]
        for column, value in (("device_id", device_id), ("model_name", model_name), ("model_version", model_version)):
            if value:
                clauses.append(f"{column}=?")
                params.append(value)
        where = " AND ".join(clauses)
        total = int(self.db.query(f"SELECT COUNT(*) AS n FROM telemetry_windows WHERE {where}", params)[0]["n"])
        rows = self.db.query(
            f"SELECT {_SUMMARY_COLUMNS} FROM telemetry_windows WHERE {where} "
            "ORDER BY received_at DESC LIMIT ? OFFSET ?",
            params + [limit, offset],
        )
        for row in rows:
            row["cohort"] = json.loads(row["cohort"])
        return rows, total

    def device_sequences(self, device_id: str) -> list[int]:
        return [
            r["sequence"]
            for r in self.db.query(
                "SELECT sequence FROM telemetry_windows WHERE device_id=? ORDER BY sequence", [device_id]
            )
        ]

    def count_windows(self, device_id: str | None = None) -> int:
        if device_id is None:
            return int(self.db.query("SELECT COUNT(*) AS n FROM telemetry_windows")[0]["n"])
        return int(self.db.query("SELECT COUNT(*) AS n FROM telemetry_windows WHERE device_id=?", [device_id])[0]["n"])

    def model_series(
        self,
        model_name: str,
        model_version: str | None = None,
        since: float = 0.0,
        until: float | None = None,
        bucket_s: float = 60.0,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Per time bucket: windows, devices, requests by source, mean latency (a per-model time series)."""
        params: list[Any] = [bucket_s, bucket_s, model_name, since, until if until is not None else 1e18]
        where = "model_name=? AND received_at>=? AND received_at<=?"
        if model_version:
            where += " AND model_version=?"
            params.append(model_version)
        params.append(limit)
        d = self.db.dialect
        requests = d.greatest("1", "SUM(n_edge + n_cloud + n_degraded + n_error)")
        return self.db.query(
            f"SELECT {d.int_floor('received_at / ?')} * ? AS bucket_start, model_version, COUNT(*) AS windows, "
            "COUNT(DISTINCT device_id) AS devices, SUM(n_edge) AS edge, SUM(n_cloud) AS cloud, "
            "SUM(n_degraded) AS edge_degraded, SUM(n_error) AS error, SUM(samples) AS samples, "
            f"SUM(latency_sum_ms) / {requests} AS latency_mean_ms, "
            f"MAX(latency_max_ms) AS latency_max_ms FROM telemetry_windows WHERE {where} "
            "GROUP BY bucket_start, model_version ORDER BY bucket_start LIMIT ?",
            params,
        )

    def device_payloads(self, device_ids: Sequence[str], since: float) -> list[bytes]:
        """Payloads of these devices' windows that ended at or after `since` (rollout quality gates)."""
        ids = list(dict.fromkeys(device_ids))
        out: list[bytes] = []
        for i in range(0, len(ids), 500):  # under SQLite's host-parameter limit
            chunk = ids[i : i + 500]
            out += [
                r["payload"]
                for r in self.db.query(
                    f"SELECT payload FROM telemetry_windows WHERE device_id IN ({','.join('?' * len(chunk))}) "
                    "AND received_at>=? ORDER BY device_id, sequence",
                    [*chunk, since],
                )
            ]
        return out

    def windows_since(self, since: float) -> Iterable[tuple[bytes, str, float]]:
        """(payload, cohort, received_at) of windows that ended after `since` (engine rebuild on start)."""
        return [
            (r["payload"], r["cohort"], r["received_at"])
            for r in self.db.query(
                "SELECT payload, cohort, received_at FROM telemetry_windows WHERE received_at>=? ORDER BY received_at",
                [since],
            )
        ]

    def purge(self, before: float, chunk: int = 5000) -> int:
        """Delete windows that ended before `before` (retention), in short transactions so the
        ingest writer never waits long for the lock; returns how many."""
        total = 0
        while True:
            n = self.db.execute(
                "DELETE FROM telemetry_windows WHERE (device_id, sequence) IN (SELECT device_id, sequence "
                "FROM telemetry_windows WHERE received_at<? LIMIT ?)",
                [before, chunk],
            )
            total += n
            if n < chunk:
                return total

    # -- alerts -------------------------------------------------------------------------

    def open_alert(
        self,
        model_name: str,
        model_version: str,
        cohort: str,
        signal: str,
        stats: dict[str, Any],
        at: float | None = None,
    ) -> int:
        with self.db.transaction() as tx:
            rows = tx.query(
                "INSERT INTO drift_alerts (model_name, model_version, cohort, signal, state, opened_at, open_stats, "
                "last_stats) VALUES (?,?,?,?, 'open', ?, ?, ?) RETURNING id",
                [model_name, model_version, cohort, signal, at or time.time(), json.dumps(stats), json.dumps(stats)],
            )
            return int(rows[0]["id"])

    def close_alert(self, alert_id: int, stats: dict[str, Any], at: float | None = None) -> None:
        self.db.execute(
            "UPDATE drift_alerts SET state='closed', closed_at=?, last_stats=? WHERE id=?",
            [at or time.time(), json.dumps(stats), alert_id],
        )

    def alerts(
        self, state: str | None = None, model_name: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        clauses, params = [], []
        if state:
            clauses.append("state=?")
            params.append(state)
        if model_name:
            clauses.append("model_name=?")
            params.append(model_name)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        total = int(self.db.query(f"SELECT COUNT(*) AS n FROM drift_alerts {where}", params)[0]["n"])
        rows = self.db.query(
            f"SELECT * FROM drift_alerts {where} ORDER BY id DESC LIMIT ? OFFSET ?", params + [limit, offset]
        )
        for row in rows:
            row["cohort"] = json.loads(row["cohort"])
            row["open_stats"] = json.loads(row["open_stats"])
            row["last_stats"] = json.loads(row["last_stats"])
        return rows, total

    def open_alerts(self) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT id, model_name, model_version, cohort, signal FROM drift_alerts WHERE state='open'"
        )


_SUMMARY_COLUMNS = (
    "device_id, sequence, model_name, model_version, profile, cohort, start_unix, end_unix, received_at, "
    "n_edge AS edge, n_cloud AS cloud, n_degraded AS edge_degraded, n_error AS error, samples, "
    "latency_sum_ms, latency_max_ms, outbox_dropped_total"
)
