"""Benchmark telemetry storage: bytes per device-day with raw retention + rollups, against keeping raw windows.

A simulated fleet (one window per device every --window-s seconds, the realistic windows of
bench/telemetry.py: 5 input summaries x 11 bins, 20 confidence bins, 10 classes, a few cohorts)
is written through the real TelemetryStore (SQLite file, or PostgreSQL with --database-url) on a
controllable clock, and the real
retention pass (cloud_hub/telemetry/retention.py: rollups, then deletes) runs every
--interval-s of simulated time, for --hours. Bytes are what SQLite's dbstat says the tables
and indexes use (pages in use; the file also holds free pages that later inserts reuse), or on
PostgreSQL pg_total_relation_size after VACUUM FULL (the live data; what the files held before it,
dead rows' space included, is printed beside it).

The baseline, measured in the same run from the same database, is the hub before rollups:
every raw window kept, i.e. (bytes per stored raw window) x (windows per device-day).

Retention defaults to the hub's [telemetry] defaults (cloud_hub/config.py TelemetryConfig).

Usage: python bench/telemetry_storage.py [--json] [--devices 50] [--hours 24] [--window-s 10]
           [--raw-retention-s 300] [--minute-retention-s 5400] [--device-minute-retention-s 1200]
           [--database-url postgresql://...]
Progress goes to stderr; the result (a table, or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.telemetry import make_window  # noqa: E402
from tandem.cloud_hub.config import TelemetryConfig  # noqa: E402
from tandem.cloud_hub.telemetry.engine import cohort_of  # noqa: E402
from tandem.cloud_hub.telemetry.retention import RetentionPolicy, TelemetryRetention  # noqa: E402
from tandem.cloud_hub.telemetry.rollups import HOUR, MINUTE  # noqa: E402
from tandem.cloud_hub.telemetry.store import TELEMETRY_SCHEMA, StoredWindow, TelemetryStore  # noqa: E402
from tandem.protocols.telemetry_codec import TelemetryWindow, decode_window, encode_window  # noqa: E402

DAY = 86400.0
TARGET_BYTES_PER_DEVICE_DAY = 50_000


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def used_bytes(store: TelemetryStore) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes of pages in use per table (its indexes added to it), and per table or index, from SQLite's dbstat."""
    rows = store.db.query(
        "SELECT s.name AS name, COALESCE(m.tbl_name, s.name) AS tbl, SUM(s.pgsize - s.unused) AS used "
        "FROM dbstat AS s LEFT JOIN sqlite_schema AS m ON m.name = s.name GROUP BY s.name"
    )
    out: dict[str, int] = {}
    for r in rows:
        out[r["tbl"]] = out.get(r["tbl"], 0) + int(r["used"])
    return out, {str(r["name"]): int(r["used"]) for r in rows}


def pg_used_bytes(url: str) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """PostgreSQL: each telemetry table's pg_total_relation_size (indexes and TOAST included) as allocated
    after a plain VACUUM (dead rows' space reusable but still in the files: the bloat a table carries when
    autovacuum lags), then after VACUUM FULL (rewritten compactly: the live data, as SQLite's pages in use);
    and, after VACUUM FULL, each relation on its own (heap with its TOAST and free-space/visibility maps:
    pg_table_size; each index: pg_relation_size)."""
    import psycopg

    query = (
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'"
    )
    parts = (
        "SELECT c.relname, CASE WHEN c.relkind = 'r' THEN pg_table_size(c.oid) ELSE pg_relation_size(c.oid) END "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'i')"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM")
        allocated = {str(name): int(size) for name, size in conn.execute(query, [TELEMETRY_SCHEMA]).fetchall()}
        conn.execute("VACUUM FULL")
        live = {str(name): int(size) for name, size in conn.execute(query, [TELEMETRY_SCHEMA]).fetchall()}
        relations = {str(name): int(size) for name, size in conn.execute(parts, [TELEMETRY_SCHEMA]).fetchall()}
    return live, allocated, relations


def pg_reset(url: str) -> None:
    """Drop the telemetry schema of the throwaway database the bench was given."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {TELEMETRY_SCHEMA} CASCADE")


def rows_of(store: TelemetryStore, table: str, where: str = "", params: tuple = ()) -> int:
    return int(store.db.query(f"SELECT COUNT(*) AS n FROM {table} {where}", list(params))[0]["n"])


def simulate(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    if args.database_url:
        pg_reset(args.database_url)
    store = TelemetryStore.open(args.database_url or workdir)
    policy = RetentionPolicy(
        raw_retention_s=args.raw_retention_s,
        minute_retention_s=args.minute_retention_s,
        device_minute_retention_s=args.device_minute_retention_s or None,
        hour_retention_s=400 * DAY,
        interval_s=args.interval_s,
    )
    retention = TelemetryRetention(store, policy)
    devices = [f"dev-{i:06d}" for i in range(args.devices)]
    t0 = 1_800_000_000.0
    ticks = int(args.hours * 3600 / args.window_s)
    next_pass = t0 + args.interval_s
    started = time.perf_counter()
    rollup_s = 0.0
    cohort_cache: dict[str, str] = {}
    # a pool of realistic windows (bench/telemetry.py's), re-addressed per device and sequence: generating each
    # from scratch costs more than storing it
    pool = [decode_window(make_window(rng, "dev-000000", 1, t0)) for _ in range(64)]
    for k in range(1, ticks + 1):
        now = t0 + k * args.window_s
        items = []
        for i, d in enumerate(devices):
            w = TelemetryWindow()
            w.CopyFrom(pool[(k * 7 + i) % len(pool)])
            w.device_id, w.sequence, w.start_unix, w.end_unix = d, k, now - args.window_s, now
            w.tags["site"] = f"site-{i % args.cohorts}"
            payload = encode_window(w)
            cohort = cohort_cache.get(d) or cohort_cache.setdefault(d, cohort_of(w).cohort)
            items.append(StoredWindow(w, payload, cohort, now))
        store.insert_windows(items)
        if now >= next_pass:
            t = time.perf_counter()
            retention.run_once(now)
            rollup_s += time.perf_counter() - t
            next_pass = now + args.interval_s
        if k % max(1, ticks // 12) == 0:
            log(f"simulated {k * args.window_s / 3600:.1f} h of {args.hours} h ({time.perf_counter() - started:.0f} s)")
    allocated: dict[str, int] | None = None
    if args.database_url:
        used, allocated, relations = pg_used_bytes(args.database_url)
    else:
        store.db.query("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL folded into the file before it is measured
        used, relations = used_bytes(store)
    windows_total = ticks * len(devices)
    raw_rows = rows_of(store, "telemetry_windows")
    dev_min = rows_of(store, "telemetry_device_rollups", "WHERE res=?", (MINUTE,))
    dev_hour = rows_of(store, "telemetry_device_rollups", "WHERE res=?", (HOUR,))
    coh_min = rows_of(store, "telemetry_cohort_rollups", "WHERE res=?", (MINUTE,))
    coh_hour = rows_of(store, "telemetry_cohort_rollups", "WHERE res=?", (HOUR,))
    raw_bytes = used.get("telemetry_windows", 0)
    dev_bytes = used.get("telemetry_device_rollups", 0)
    coh_bytes = used.get("telemetry_cohort_rollups", 0)
    per_raw = raw_bytes / max(1, raw_rows)
    per_dev_row = dev_bytes / max(1, dev_min + dev_hour)
    per_coh_row = coh_bytes / max(1, coh_min + coh_hour)
    n = len(devices)
    windows_per_day = DAY / args.window_s
    telemetry_tables = raw_bytes + dev_bytes + coh_bytes + used.get("telemetry_rollup_cursor", 0)
    days = args.hours / 24
    # what one more day of history adds once raw windows and minute rows have aged out: the hour rollups
    hour_growth = (dev_hour * per_dev_row + coh_hour * per_coh_row) / n / days
    cohorts = len(set(cohort_cache.values()))
    # a device's share of the database after a day in steady state, from the measured bytes per row: the raw
    # windows and minute rows inside their retention, plus one day of hour rows (equals `measured` at --hours 24)
    steady = (
        min(args.raw_retention_s, DAY) / args.window_s * per_raw
        + min(policy.device_minutes_s, DAY) / MINUTE * per_dev_row
        + min(args.minute_retention_s, DAY) / MINUTE * cohorts * per_coh_row / n
        + 24 * (per_dev_row + cohorts * per_coh_row / n)
    )
    file_bytes = None if args.database_url else sum(p.stat().st_size for p in workdir.glob("telemetry.sqlite*"))
    store.close()
    baseline = per_raw * windows_per_day  # today: every raw window kept
    measured = telemetry_tables / n
    return {
        "backend": "postgresql" if args.database_url else "sqlite",
        "devices": n,
        "cohorts": cohorts,
        "simulated_hours": args.hours,
        "window_s": args.window_s,
        "windows": windows_total,
        "raw_retention_s": args.raw_retention_s,
        "minute_retention_s": args.minute_retention_s,
        "device_minute_retention_s": policy.device_minutes_s,
        "rows": {
            "raw_windows": raw_rows,
            "device_minute": dev_min,
            "device_hour": dev_hour,
            "cohort_minute": coh_min,
            "cohort_hour": coh_hour,
        },
        "bytes_used": {"raw_windows": raw_bytes, "device_rollups": dev_bytes, "cohort_rollups": coh_bytes},
        # each table (heap, or SQLite's table b-tree) and index on its own, per device: where the bytes go
        "bytes_per_device_by_relation": {
            name: round(size / len(devices)) for name, size in sorted(relations.items()) if size
        },
        "bytes_per_raw_window": round(per_raw, 1),
        "bytes_per_device_rollup_row": round(per_dev_row, 1),
        "bytes_per_cohort_rollup_row": round(per_coh_row, 1),
        "file_bytes": file_bytes,
        "pg_allocated_bytes_per_device": round(sum(allocated.values()) / n) if allocated else None,
        "bytes_per_device_measured": round(measured),
        "bytes_per_device_day": round(steady),
        "bytes_per_device_day_kept_long": round(hour_growth),
        "raw_bytes_per_device_held": round(raw_bytes / n),
        "baseline_raw_forever_bytes_per_device_day": round(baseline),
        "ratio_vs_baseline": round(steady / baseline, 4),
        "target_bytes_per_device_day": TARGET_BYTES_PER_DEVICE_DAY,
        "meets_target": steady <= TARGET_BYTES_PER_DEVICE_DAY,
        # wall time of the passes (rollup, deletes, their fsyncs) over the windows; a pass has a fixed cost, so a
        # small simulated fleet overstates it per window
        "retention_pass_wall_s_per_1000_windows": round(rollup_s / windows_total * 1000, 4),
        "wall_s": round(time.perf_counter() - started, 1),
        "host": platform.node(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--cohorts", type=int, default=2, help="sites (cohort tags) the devices are spread over")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--interval-s", type=float, default=30.0, help="simulated time between retention passes")
    hub = TelemetryConfig()  # the hub's [telemetry] defaults
    parser.add_argument("--raw-retention-s", type=float, default=hub.retention_s)
    parser.add_argument("--minute-retention-s", type=float, default=hub.minute_retention_s)
    parser.add_argument(
        "--device-minute-retention-s",
        type=float,
        default=hub.device_minute_retention_s,
        help="0: --minute-retention-s (default: the hub's [telemetry] device_minute_retention_s)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgresql://... of a THROWAWAY database: its telemetry schema is dropped first (default: SQLite)",
    )
    args = parser.parse_args()
    log(f"{args.devices} devices in {args.cohorts} cohorts x {args.hours} h at one window per {args.window_s} s")
    with tempfile.TemporaryDirectory(prefix="tandem-storage-") as tmp:
        result = simulate(args, args.workdir or Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for k, v in result.items():
        print(f"{k:44s} {v}")


if __name__ == "__main__":
    main()
