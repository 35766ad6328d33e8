"""Rollup tables in the telemetry database: the rollup pass over raw windows, reads, and purges.

The pass is idempotent by construction: it walks raw windows in (received_at, device_id,
sequence) order from a stored cursor and, in ONE transaction per bounded batch, adds them
into the rollup rows and moves the cursor past them. A crash before the commit leaves both
unchanged; a redelivered window was never inserted (raw windows are idempotent on
(device_id, sequence)), so it is never summed twice. Windows younger than `settle_s` wait:
a batch is stamped with its receipt time before it commits, so a later commit may carry an
earlier stamp (and replicas' clocks differ by a little); the settle time covers both.

SQL is portable between SQLite and PostgreSQL: `?` placeholders, INSERT ... ON CONFLICT
DO UPDATE, no rowid, no SQLite functions; everything goes through HubDatabase.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from tandem.cloud_hub.errors import HubError, InvalidInputError
from tandem.cloud_hub.storage.db import HubDatabase, Transaction
from tandem.cloud_hub.telemetry.rollups import (
    HOUR,
    MINUTE,
    RESOLUTIONS,
    CohortBucket,
    CohortRollup,
    DeviceBucket,
    DeviceRollup,
    Rollups,
    pack_counts,
    DeviceSum,
    bucket_of,
    device_sums,
    pack_histograms,
    pack_quality,
    unpack_counts,
    unpack_histograms,
    unpack_quality,
)
from tandem.protocols.telemetry_codec import TelemetryWindow

log = logging.getLogger(__name__)

# Created by the telemetry store's migration 2 (store.TELEMETRY_MIGRATIONS; IF NOT EXISTS because hubs before it
# created them on open). Keys lead with what reads filter on; the time indexes serve retention (res, bucket < ?)
# and the per-model series (res, bucket, model). Migration 3 adds telemetry_device_rollups.quality.
ROLLUP_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS telemetry_device_rollups (
    device_id TEXT NOT NULL,
    res INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    windows INTEGER NOT NULL,
    edge INTEGER NOT NULL,
    cloud INTEGER NOT NULL,
    edge_degraded INTEGER NOT NULL,
    error INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    latency_sum_ms REAL NOT NULL,
    latency_max_ms REAL NOT NULL,
    outbox_dropped_total INTEGER NOT NULL,
    latency BLOB NOT NULL,
    PRIMARY KEY (device_id, res, bucket, model_name, model_version)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS telemetry_device_rollups_time ON telemetry_device_rollups (res, bucket, model_name)",
    """CREATE TABLE IF NOT EXISTS telemetry_cohort_rollups (
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    cohort TEXT NOT NULL,
    res INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    windows INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    histograms BLOB NOT NULL,
    PRIMARY KEY (model_name, model_version, cohort, res, bucket)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS telemetry_cohort_rollups_time ON telemetry_cohort_rollups (res, bucket)",
    """CREATE TABLE IF NOT EXISTS telemetry_rollup_cursor (
    name TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    device_id TEXT NOT NULL,
    sequence INTEGER NOT NULL)""",
)

CURSOR = "windows"
LOOKUP_CHUNK = 150  # keys per lookup: 750 parameters, under SQLite's oldest limit (999)
RAW_PURGED = "raw_purged"  # a second row: raw windows received before its received_at have been deleted
# a third: per-device minute rows of buckets before its received_at are gone (quality reads start after it)
DEVICE_MINUTES_PURGED = "device_minutes_purged"
QUALITY_READ_TRIES = 5  # a quality read retries while a rollup pass or purge commits under it
ROLLUP_TABLES = ("telemetry_device_rollups", "telemetry_cohort_rollups")

_DEVICE_VALUES = (
    "windows, edge, cloud, edge_degraded, error, samples, latency_sum_ms, latency_max_ms, outbox_dropped_total, "
    "latency, quality"
)
_DEVICE_KEY = "device_id, res, bucket, model_name, model_version"
_COHORT_KEY = "model_name, model_version, cohort, res, bucket"


@dataclass(frozen=True)
class Cursor:
    """The last raw window rolled up, in (received_at, device_id, sequence) order."""

    received_at: float = -1.0  # before any receipt time
    device_id: str = ""
    sequence: int = 0


@dataclass(frozen=True)
class PassResult:
    windows: int  # raw windows summed in this batch
    unreadable: int  # raw windows whose payload did not decode (skipped, counted, cursor moves on)
    cursor: Cursor


class RollupStore:
    """Reads and writes the rollup tables; thread-safe through HubDatabase's lock."""

    def __init__(self, db: HubDatabase, resolutions: Sequence[int] = RESOLUTIONS) -> None:
        self.db = db
        self.resolutions = tuple(resolutions)

    # -- the rollup pass --------------------------------------------------------------------

    def cursor(self) -> Cursor:
        return _cursor(
            self.db.query("SELECT received_at, device_id, sequence FROM telemetry_rollup_cursor WHERE name=?", [CURSOR])
        )

    def roll_up_batch(self, upto: float, limit: int = 2000) -> PassResult:
        """Sum the next `limit` raw windows received before `upto` into the rollups, in one transaction."""
        with self.db.transaction() as tx:
            cur = self._read_cursor(tx)
            rows = tx.query(
                "SELECT device_id, sequence, cohort, received_at, payload FROM telemetry_windows "
                "WHERE received_at >= ? AND received_at < ? AND (received_at > ? OR (received_at = ? AND "
                "(device_id > ? OR (device_id = ? AND sequence > ?)))) "
                "ORDER BY received_at, device_id, sequence LIMIT ?",
                [
                    cur.received_at,
                    upto,
                    cur.received_at,
                    cur.received_at,
                    cur.device_id,
                    cur.device_id,
                    cur.sequence,
                    limit,
                ],
            )
            if not rows:
                return PassResult(0, 0, cur)
            windows: list[tuple[TelemetryWindow, str, float]] = []
            unreadable = 0
            for r in rows:
                try:
                    # validated when it was ingested: parse only (validation cost ~40% of the pass, measured)
                    w = TelemetryWindow.FromString(bytes(r["payload"]))
                    windows.append((w, str(r["cohort"]), float(r["received_at"])))
                except Exception as exc:  # stored before a codec change, or corrupt: never block the pass
                    unreadable += 1
                    log.warning(
                        "rollup skips an unreadable window device=%s seq=%s error=%s",
                        r["device_id"],
                        r["sequence"],
                        exc,
                    )
            rollups = Rollups()
            rollups.add_many(windows, self.resolutions)
            self._merge_devices(tx, rollups.devices)
            self._merge_cohorts(tx, rollups.cohorts)
            last = rows[-1]
            new = Cursor(float(last["received_at"]), str(last["device_id"]), int(last["sequence"]))
            # compare-and-set: a second pass that read the same cursor (a lease handover overlapping on
            # PostgreSQL) finds it moved, and its whole batch rolls back instead of counting twice
            moved = tx.execute(
                "UPDATE telemetry_rollup_cursor SET received_at=?, device_id=?, sequence=? "
                "WHERE name=? AND received_at=? AND device_id=? AND sequence=?",
                [new.received_at, new.device_id, new.sequence, CURSOR, cur.received_at, cur.device_id, cur.sequence],
            )
            if moved != 1:
                raise RollupConflictError("another rollup pass moved the cursor meanwhile; this batch rolled back")
            cur = new
        return PassResult(len(rows) - unreadable, unreadable, cur)

    def _read_cursor(self, tx: Transaction) -> Cursor:
        start = Cursor()
        tx.execute(
            "INSERT INTO telemetry_rollup_cursor (name, received_at, device_id, sequence) VALUES (?,?,?,?) "
            "ON CONFLICT (name) DO NOTHING",
            [CURSOR, start.received_at, start.device_id, start.sequence],
        )
        rows = tx.query("SELECT received_at, device_id, sequence FROM telemetry_rollup_cursor WHERE name=?", [CURSOR])
        return _cursor(rows)

    def _merge_devices(self, tx: Transaction, rows: dict[DeviceBucket, DeviceRollup]) -> None:
        keys = [(k.device_id, k.res, k.bucket, k.model_name, k.model_version) for k in rows]
        old = _existing(tx, "telemetry_device_rollups", _DEVICE_KEY, _DEVICE_VALUES, keys)
        out = []
        for key, add in zip(keys, rows.values()):
            value = add
            if key in old:
                value = _device_from_row(old[key])
                value.merge(add)
            out.append(
                [
                    *key,
                    value.windows,
                    value.edge,
                    value.cloud,
                    value.edge_degraded,
                    value.error,
                    value.samples,
                    value.latency_sum_ms,
                    value.latency_max_ms,
                    value.outbox_dropped_total,
                    pack_counts(value.latency),
                    pack_quality(value) if key[1] == MINUTE else b"",  # hour rows, kept long, stay small
                ]
            )
        tx.executemany(
            f"INSERT INTO telemetry_device_rollups ({_DEVICE_KEY}, {_DEVICE_VALUES}) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            f"ON CONFLICT ({_DEVICE_KEY}) DO UPDATE SET windows=excluded.windows, edge=excluded.edge, "
            "cloud=excluded.cloud, edge_degraded=excluded.edge_degraded, error=excluded.error, "
            "samples=excluded.samples, latency_sum_ms=excluded.latency_sum_ms, "
            "latency_max_ms=excluded.latency_max_ms, outbox_dropped_total=excluded.outbox_dropped_total, "
            "latency=excluded.latency, quality=excluded.quality",
            out,
        )

    def _merge_cohorts(self, tx: Transaction, rows: dict[CohortBucket, CohortRollup]) -> None:
        keys = [(k.model_name, k.model_version, k.cohort, k.res, k.bucket) for k in rows]
        old = _existing(tx, "telemetry_cohort_rollups", _COHORT_KEY, "windows, samples, histograms", keys)
        out = []
        for key, add in zip(keys, rows.values()):
            value = add
            if key in old:
                o = old[key]
                value = CohortRollup(int(o["windows"]), int(o["samples"]), unpack_histograms(bytes(o["histograms"])))
                value.merge(add)
            out.append([*key, value.windows, value.samples, pack_histograms(value.histograms)])
        tx.executemany(
            f"INSERT INTO telemetry_cohort_rollups ({_COHORT_KEY}, windows, samples, histograms) "
            f"VALUES (?,?,?,?,?,?,?,?) ON CONFLICT ({_COHORT_KEY}) DO UPDATE SET windows=excluded.windows, "
            "samples=excluded.samples, histograms=excluded.histograms",
            out,
        )

    def windows_after_cursor(self, since: float) -> list[tuple[bytes, str, float]]:
        """(payload, cohort, received_at) of raw windows received at or after `since` and not yet rolled up
        (the drift engine's rebuild adds them to what the cohort rollups hold)."""
        cur = self.cursor()
        return [
            (bytes(r["payload"]), r["cohort"], float(r["received_at"]))
            for r in self.db.query(
                "SELECT payload, cohort, received_at FROM telemetry_windows WHERE received_at >= ? AND "
                "(received_at > ? OR (received_at = ? AND (device_id > ? OR (device_id = ? AND sequence > ?)))) "
                "ORDER BY received_at, device_id, sequence",
                [since, cur.received_at, cur.received_at, cur.device_id, cur.device_id, cur.sequence],
            )
        ]

    # -- retention ------------------------------------------------------------------------------

    def note_raw_purged(self, before: float) -> None:
        """Record that raw windows received before `before` are gone: ranges older than this need rollups."""
        self._note_purged(RAW_PURGED, before)

    def _note_purged(self, name: str, before: float) -> None:
        self.db.execute(
            "INSERT INTO telemetry_rollup_cursor (name, received_at, device_id, sequence) VALUES (?,?,'',0) "
            "ON CONFLICT (name) DO UPDATE SET received_at=excluded.received_at "
            "WHERE excluded.received_at > telemetry_rollup_cursor.received_at",
            [name, before],
        )

    def _purged_before(self, name: str) -> float:
        rows = self.db.query("SELECT received_at FROM telemetry_rollup_cursor WHERE name=?", [name])
        return float(rows[0]["received_at"]) if rows else 0.0

    def raw_complete_since(self) -> float:
        """The receipt time from which every raw window is still stored (0: none was ever deleted)."""
        return self._purged_before(RAW_PURGED)

    def device_minutes_since(self) -> float:
        """The bucket time from which every per-device minute row is still stored (0: none was ever deleted)."""
        return self._purged_before(DEVICE_MINUTES_PURGED)

    def purge(self, res: int, before: float, chunk: int = 5000, devices_before: float | None = None) -> int:
        """Delete rollup rows of resolution `res` whose bucket started before `before` (per-device rows: before
        `devices_before` when given), in short transactions."""
        total = 0
        for table, key, limit in (
            ("telemetry_device_rollups", _DEVICE_KEY, before if devices_before is None else devices_before),
            ("telemetry_cohort_rollups", _COHORT_KEY, before),
        ):
            if res == MINUTE and table == "telemetry_device_rollups" and limit > 0:
                self._note_purged(DEVICE_MINUTES_PURGED, limit)  # first, as for raw windows: readers start later
            while True:
                with self.db.transaction() as tx:
                    n = tx.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
                        "WHERE res = ? AND bucket < ? LIMIT ?)",
                        [res, limit, chunk],
                    )
                total += n
                if n < chunk:
                    break
        return total

    # -- reads --------------------------------------------------------------------------------

    def device_sums(self, device_ids: Sequence[str], since: float) -> list[DeviceSum]:
        """These devices' sums per (device, model version) over the windows received from the minute holding
        `since` on: what a rollout quality gate judges a wave and its control cohort on.

        Read from what outlives raw retention: per-device minute rows (the only rows that keep the quality
        figures; a span older than [telemetry] device_minute_retention_s is judged from the oldest minute still
        kept), plus the raw windows the rollup pass has not reached yet. The cursor separates the two, so no
        window counts twice or not at all; a pass or purge committing during the read moves the cursor or a
        purge marker, and the read runs again. A span judged across a rollup pass therefore sums the same
        windows before and after it."""
        ids = list(dict.fromkeys(device_ids))
        wanted = bucket_of(max(0.0, min(since, LATEST_BUCKET_TIME)), MINUTE)
        for _ in range(QUALITY_READ_TRIES):
            marks = self._read_marks()
            start = max(wanted, -(-int(marks[1]) // MINUTE) * MINUTE)  # whole minutes still kept
            out = self._rolled_up_sums(ids, start)
            out += self._unrolled_sums(ids, start, marks[0])
            if self._read_marks() == marks:
                return _merged(out)
        raise RollupConflictError(f"device sums: rollup passes kept committing under {QUALITY_READ_TRIES} reads")

    def _read_marks(self) -> tuple[Cursor, float]:
        return self.cursor(), self._purged_before(DEVICE_MINUTES_PURGED)

    def _rolled_up_sums(self, ids: list[str], start: int) -> list[DeviceSum]:
        """The minute rows of these devices from bucket `start` on."""
        out: list[DeviceSum] = []
        for i in range(0, len(ids), 500):  # under SQLite's host-parameter limit
            chunk = ids[i : i + 500]
            for r in self.db.query(
                f"SELECT device_id, model_version, {_DEVICE_VALUES} FROM telemetry_device_rollups "
                f"WHERE device_id IN ({','.join('?' * len(chunk))}) AND res=? AND bucket>=?",
                [*chunk, MINUTE, start],
            ):
                out.append(DeviceSum(str(r["device_id"]), str(r["model_version"]), _device_from_row(r)))
        return out

    def _unrolled_sums(self, ids: list[str], start: int, cur: Cursor) -> list[DeviceSum]:
        """The raw windows of these devices received from `start` on that the rollup pass has not summed."""
        windows: list[TelemetryWindow] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for r in self.db.query(
                f"SELECT device_id, sequence, payload FROM telemetry_windows WHERE device_id IN "
                f"({','.join('?' * len(chunk))}) AND received_at >= ? AND (received_at > ? OR (received_at = ? AND "
                "(device_id > ? OR (device_id = ? AND sequence > ?))))",
                [*chunk, start, cur.received_at, cur.received_at, cur.device_id, cur.device_id, cur.sequence],
            ):
                try:
                    windows.append(TelemetryWindow.FromString(bytes(r["payload"])))
                except Exception as exc:  # the rollup pass skips it too: the same windows either way
                    log.warning("quality read skips an unreadable window device=%s seq=%s error=%s",
                                r["device_id"], r["sequence"], exc)  # fmt: skip
        return device_sums(windows)

    def device_rollups(
        self, device_id: str, res: int = HOUR, since: float = 0.0, until: float | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """One device's buckets at resolution `res`, oldest first (its long-range time series)."""
        rows = self.db.query(
            f"SELECT bucket, model_name, model_version, {_DEVICE_VALUES} FROM telemetry_device_rollups "
            "WHERE device_id=? AND res=? AND bucket>=? AND bucket<=? ORDER BY bucket, model_name, model_version LIMIT ?",
            [device_id, res, _bucket_floor(since, res), until if until is not None else 1e18, limit],
        )
        for row in rows:
            row["latency_counts"] = unpack_counts(bytes(row.pop("latency"))).tolist()
            q = unpack_quality(row.pop("quality"), DeviceRollup())
            row["confidence_counts"], row["class_counts"] = q.confidence.tolist(), q.classes.tolist()
            row["shadow_samples"], row["shadow_agree"] = q.shadow_samples, q.shadow_agree
        return rows

    def model_series(
        self,
        model_name: str,
        model_version: str | None = None,
        since: float = 0.0,
        until: float | None = None,
        bucket_s: float = 3600.0,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """The per-model series (store.TelemetryStore.model_series's shape) from per-device rollups: exact for
        buckets that are whole multiples of a rollup resolution (devices: distinct devices in the bucket)."""
        res = rollup_resolution(bucket_s)
        step = int(bucket_s)
        where = "res=? AND bucket>=? AND bucket<=? AND model_name=?"
        params: list[Any] = [res, _bucket_floor(since, res), until if until is not None else 1e18, model_name]
        if model_version:
            where += " AND model_version=?"
            params.append(model_version)
        rows = self.db.query(
            f"SELECT (bucket / {step}) * {step} AS bucket_start, model_version, SUM(windows) AS windows, "
            "COUNT(DISTINCT device_id) AS devices, SUM(edge) AS edge, SUM(cloud) AS cloud, "
            "SUM(edge_degraded) AS edge_degraded, SUM(error) AS error, SUM(samples) AS samples, "
            "SUM(latency_sum_ms) AS latency_sum_ms, MAX(latency_max_ms) AS latency_max_ms "
            f"FROM telemetry_device_rollups WHERE {where} "
            f"GROUP BY (bucket / {step}) * {step}, model_version ORDER BY bucket_start, model_version LIMIT ?",
            params + [limit],
        )
        for row in rows:
            n = row["edge"] + row["cloud"] + row["edge_degraded"] + row["error"]
            row["latency_mean_ms"] = row.pop("latency_sum_ms") / max(1, n)
            row["bucket_start"] = float(row["bucket_start"])
        return rows

    def cohort_rollups(
        self, res: int = MINUTE, since: float = 0.0, until: float | None = None
    ) -> Iterable[tuple[CohortBucket, CohortRollup]]:
        """Every cohort's buckets at resolution `res` in [since, until] (the drift engine's input)."""
        for r in self.db.query(
            f"SELECT {_COHORT_KEY}, windows, samples, histograms FROM telemetry_cohort_rollups "
            "WHERE res=? AND bucket>=? AND bucket<=? ORDER BY bucket",
            [res, _bucket_floor(since, res), until if until is not None else 1e18],
        ):
            key = CohortBucket(r["model_name"], r["model_version"], r["cohort"], int(r["res"]), int(r["bucket"]))
            yield key, CohortRollup(int(r["windows"]), int(r["samples"]), unpack_histograms(bytes(r["histograms"])))


class RollupConflictError(HubError):
    """Two rollup passes ran at once (only the lease holder should run one); the later batch was rolled back."""


class RollupRangeError(InvalidInputError):
    """A series bucket that no rollup resolution divides (the rollups cannot answer it exactly); HTTP 422."""


def rollup_resolution(bucket_s: float) -> int:
    """The coarsest rollup resolution that divides `bucket_s` (hour for 86400, minute for 300)."""
    for res in sorted(RESOLUTIONS, reverse=True):
        if bucket_s >= res and float(bucket_s) % res == 0:
            return res
    raise RollupRangeError(
        f"bucket_s={bucket_s:g}: a rollup series needs a whole multiple of {min(RESOLUTIONS)} s "
        f"(rollups are kept per {', '.join(f'{r} s' for r in RESOLUTIONS)})"
    )


# Bucket starts are stored as 64-bit integers: a query time past this (REST takes any float >= 0,
# e.g. since=9.2e18) is clamped, so it selects nothing instead of overflowing the database integer.
LATEST_BUCKET_TIME = 1e15


def _bucket_floor(t: float, res: int) -> int:
    """The start of the bucket holding `t`: a range that starts mid-bucket still gets that bucket."""
    return int(min(max(0.0, t), LATEST_BUCKET_TIME) // res) * res


def _existing(
    tx: Transaction, table: str, key_columns: str, value_columns: str, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The stored rows of these keys, by key, in a few statements (`(cols) IN (VALUES ...)`, which both engines
    run) instead of one round trip per key: on PostgreSQL the round trips were most of a pass."""
    names = [c.strip() for c in key_columns.split(",")]
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    row = "(" + ",".join("?" * len(names)) + ")"
    for i in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[i : i + LOOKUP_CHUNK]
        for r in tx.query(
            f"SELECT {key_columns}, {value_columns} FROM {table} WHERE ({key_columns}) IN "
            f"(VALUES {','.join([row] * len(chunk))})",
            [v for key in chunk for v in key],
        ):
            found[tuple(r[n] for n in names)] = r
    return found


def _merged(sums: Iterable[DeviceSum]) -> list[DeviceSum]:
    """One DeviceSum per (device, model version), in device order."""
    out: dict[tuple[str, str], DeviceRollup] = {}
    for s in sums:
        found = out.get((s.device_id, s.model_version))
        if found is None:
            out[(s.device_id, s.model_version)] = s.sums
        else:
            found.merge(s.sums)
    return [DeviceSum(d, v, r) for (d, v), r in sorted(out.items(), key=lambda kv: kv[0])]


def _cursor(rows: list[dict[str, Any]]) -> Cursor:
    if not rows:
        return Cursor()
    r = rows[0]
    return Cursor(float(r["received_at"]), str(r["device_id"]), int(r["sequence"]))


def _device_from_row(row: dict[str, Any]) -> DeviceRollup:
    r = DeviceRollup(
        windows=int(row["windows"]),
        edge=int(row["edge"]),
        cloud=int(row["cloud"]),
        edge_degraded=int(row["edge_degraded"]),
        error=int(row["error"]),
        samples=int(row["samples"]),
        latency_sum_ms=float(row["latency_sum_ms"]),
        latency_max_ms=float(row["latency_max_ms"]),
        outbox_dropped_total=int(row["outbox_dropped_total"]),
        latency=unpack_counts(bytes(row["latency"])),
    )
    return unpack_quality(row["quality"], r)
