"""Rollout quality gates read what outlives raw retention: per-device rollups plus the raw windows not rolled
up yet. A wave judged across a rollup/retention pass gets the same figures and verdict as before the pass (no
window counted twice at the cursor, none dropped), on both backends."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from tandem.cloud_hub.rollouts.controller import GatePolicy
from tandem.cloud_hub.rollouts.quality import Comparison, QualityQuery, compare_cohorts, compare_sums, verdict
from tandem.cloud_hub.telemetry.retention import RetentionPolicy, TelemetryRetention
from tandem.cloud_hub.telemetry.rollup_store import RollupStore
from tandem.cloud_hub.telemetry.rollups import MINUTE, DeviceRollup, pack_quality, unpack_quality
from tandem.cloud_hub.telemetry.store import StoredWindow, TelemetryStore
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import TelemetryWindow, encode_window

T0 = 1_800_000_000.0  # a round hour
SINCE = T0 + 125.0  # the wave opened mid-minute: the gate's span starts at the minute holding it (T0 + 120)
WAVE, CONTROL = ("w1", "w2"), ("c1", "c2")
GATES = GatePolicy(control_devices=2, min_quality_requests=100)
COHORT = '{"profile": "cpu-x86", "tags": {}}'


def window(device: str, seq: int, version: str, received_at: float, rng: np.random.Generator) -> StoredWindow:
    w = TelemetryWindow(
        schema_version=limits.TELEMETRY_SCHEMA_VERSION,
        device_id=device,
        sequence=seq,
        model_name="toy",
        model_version=version,
        profile="cpu-x86",
        start_unix=received_at - 10.0,
        end_unix=received_at,
    )
    worse = version == "2.0.0"  # the new version falls back more and is less confident
    w.requests.edge = int(rng.integers(5, 15))
    w.requests.cloud = int(rng.integers(4, 9)) if worse else int(rng.integers(0, 2))
    w.requests.error = int(rng.integers(0, 2))
    w.requests.edge_degraded = int(rng.integers(0, 2))
    n = w.requests.edge + w.requests.cloud + w.requests.edge_degraded
    w.confidence_counts.extend(int(v) for v in rng.multinomial(n, np.full(20, 0.05)))
    w.class_counts.extend(int(v) for v in rng.multinomial(n, np.full(10, 0.1)))
    w.shadow_samples = int(rng.integers(0, 4))
    w.shadow_agree = int(rng.integers(0, w.shadow_samples + 1))
    w.budget_spent = int(rng.integers(0, w.requests.edge_degraded + 1))
    w.latency_counts.extend(int(v) for v in rng.integers(0, 3, 13))
    return StoredWindow(w, encode_window(w), COHORT, received_at)


def fleet(seed: int = 0) -> list[StoredWindow]:
    """Windows every 10 s for 10 minutes from T0: wave devices on 1.0.0 until the wave opened, then 2.0.0."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(60):
        at = T0 + 10.0 * k + 3.0
        for d in WAVE:
            out.append(window(d, k + 1, "2.0.0" if at >= SINCE else "1.0.0", at, rng))
        for d in CONTROL:
            out.append(window(d, k + 1, "1.0.0", at, rng))
    return out


@pytest.fixture
def telemetry(database_target) -> Iterator[TelemetryStore]:
    s = TelemetryStore.open(database_target)
    yield s
    s.close()


def judged(rollups: RollupStore) -> Comparison:
    q = QualityQuery(WAVE, CONTROL, "2.0.0", SINCE)
    return compare_sums(q, rollups.device_sums(WAVE, SINCE), rollups.device_sums(CONTROL, SINCE), T0 + 600)


def test_a_wave_judged_across_retention_passes_keeps_its_figures_and_verdict(telemetry) -> None:
    windows = fleet()
    telemetry.insert_windows(windows)
    policy = RetentionPolicy(raw_retention_s=120.0, minute_retention_s=3600.0, settle_s=30.0)
    retention = TelemetryRetention(telemetry, policy)
    before = judged(retention.rollups)  # nothing rolled up: every window read raw
    # the old path (raw payloads from the minute holding `since`) gives the same figures
    start = T0 + 120.0
    raw = compare_cohorts(
        QualityQuery(WAVE, CONTROL, "2.0.0", SINCE),
        [s.payload for s in windows if s.window.device_id in WAVE and s.received_at >= start],
        [s.payload for s in windows if s.window.device_id in CONTROL and s.received_at >= start],
        T0 + 600,
    )
    assert before.as_dict() == raw.as_dict()
    assert before.wave.windows == 2 * 47 and before.control.windows == 2 * 48  # wave: 2.0.0 from T0+133
    assert verdict(before, GATES)[0] == "halt"

    # a pass mid-way: windows up to T0+370 rolled up, those before T0+250 deleted; the rest still raw
    report = retention.run_once(T0 + 400.0)
    assert report.rolled_up > 0 and report.raw_deleted > 0
    assert 0 < telemetry.count_windows() < len(windows)
    assert judged(retention.rollups).as_dict() == before.as_dict()
    # every window rolled up; every raw window deleted but the 4 at the cursor's receipt time (kept until it moves)
    report = retention.run_once(T0 + 1000.0)
    assert retention.rollups.cursor().received_at == T0 + 593.0 and telemetry.count_windows() == 4
    after = judged(retention.rollups)
    assert after.as_dict() == before.as_dict()
    assert verdict(after, GATES) == verdict(before, GATES)


def test_a_rollup_pass_committing_during_a_quality_read_is_not_counted_twice(telemetry, monkeypatch) -> None:
    telemetry.insert_windows(fleet(1))
    retention = TelemetryRetention(telemetry, RetentionPolicy(raw_retention_s=3000.0, settle_s=30.0))
    rollups = retention.rollups
    before = judged(rollups).as_dict()
    real = RollupStore._rolled_up_sums
    passes = []

    def pass_first(self, ids, start):  # the pass commits after the cursor was read, before the rows
        if not passes:
            passes.append(retention.roll_up(T0 + 400.0))
        return real(self, ids, start)

    monkeypatch.setattr(RollupStore, "_rolled_up_sums", pass_first)
    assert judged(rollups).as_dict() == before
    assert passes and passes[0][0] > 0


def test_a_span_older_than_the_minute_rows_is_judged_from_the_oldest_minute_still_kept(telemetry) -> None:
    telemetry.insert_windows(fleet(2))
    policy = RetentionPolicy(
        raw_retention_s=120.0, minute_retention_s=7200.0, device_minute_retention_s=300.0, settle_s=30.0
    )
    retention = TelemetryRetention(telemetry, policy)
    retention.run_once(T0 + 660.0)  # device minute rows before T0+360 gone
    assert retention.rollups.device_minutes_since() == T0 + 360.0
    after = judged(retention.rollups)
    # windows received T0+363 .. T0+593: 24 per device, none counted twice; hour rows carry no quality figures
    assert after.wave.windows == 2 * 24 and after.control.windows == 2 * 24
    assert after.wave.shadow_samples > 0 and sum(after.control.confidence) > 0
    hours = retention.rollups.device_rollups("w1", 3600)
    assert hours and all(h["confidence_counts"] == [] for h in hours)


def test_quality_blob_round_trips_and_an_old_row_reads_as_zeros() -> None:
    r = DeviceRollup(shadow_samples=7, shadow_agree=5, budget_spent=300)
    r.confidence, r.classes = np.arange(20, dtype=np.int64), np.array([0, 4, 0], dtype=np.int64)
    back = unpack_quality(pack_quality(r), DeviceRollup())
    assert (back.shadow_samples, back.shadow_agree, back.budget_spent) == (7, 5, 300)
    assert back.confidence.tolist() == list(range(20)) and back.classes.tolist() == [0, 4, 0]
    assert pack_quality(DeviceRollup()) == b""
    empty = unpack_quality("", DeviceRollup())  # the column default of a row written before migration 3
    assert empty.shadow_samples == 0 and len(empty.confidence) == 0
    assert MINUTE == 60


def test_a_telemetry_database_from_before_the_rollup_migrations_is_upgraded_in_place(database_target) -> None:
    """Hubs before migration 2 created the rollup tables on open (no `quality` column) and kept two end_unix
    indexes: opening such a database applies migrations 2-4 and keeps its rows."""
    from pathlib import Path

    from tandem.cloud_hub.storage.db import is_postgres_url, open_database
    from tandem.cloud_hub.telemetry.rollup_store import ROLLUP_SCHEMA
    from tandem.cloud_hub.telemetry.store import TELEMETRY_MIGRATIONS, TELEMETRY_MIGRATIONS_POSTGRES, TELEMETRY_SCHEMA

    pg = is_postgres_url(database_target)
    if pg:
        old = open_database(database_target, TELEMETRY_MIGRATIONS_POSTGRES[:1], schema=TELEMETRY_SCHEMA)
    else:
        Path(database_target).mkdir(parents=True, exist_ok=True)
        old = open_database(Path(database_target) / "telemetry.sqlite", TELEMETRY_MIGRATIONS[:1])
    old.ensure_schema(ROLLUP_SCHEMA)  # as RollupStore did on open
    old.execute(
        "INSERT INTO telemetry_device_rollups VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ["w1", MINUTE, int(T0) + 120, "toy", "2.0.0", 3, 30, 5, 0, 0, 35, 90.0, 40.0, 0, b"\x00"],
    )
    assert {"telemetry_windows_model", "telemetry_windows_end"} <= _indexes(old)
    old.close()
    store = TelemetryStore.open(database_target)
    try:
        assert store.db.schema_version() == TELEMETRY_MIGRATIONS[-1].version == 4
        assert not {"telemetry_windows_model", "telemetry_windows_end", "telemetry_windows_model_received"} & (
            _indexes(store.db)
        )
        (row,) = RollupStore(store.db).device_sums(["w1"], T0)
        assert (row.model_version, row.sums.windows, row.sums.edge, row.sums.shadow_samples) == ("2.0.0", 3, 30, 0)
        store.insert_windows(fleet()[:8])  # new rows get the column
        retention = TelemetryRetention(store, RetentionPolicy(raw_retention_s=120.0, settle_s=30.0))
        retention.run_once(T0 + 400.0)
        assert sum(s.sums.windows for s in retention.rollups.device_sums(["w1"], T0)) == 3 + 2
    finally:
        store.close()


def _indexes(db) -> set[str]:
    if db.dialect.is_postgres:
        rows = db.query("SELECT indexname AS name FROM pg_indexes WHERE schemaname = current_schema()")
    else:
        rows = db.query("SELECT name FROM sqlite_schema WHERE type = 'index'")
    return {str(r["name"]) for r in rows}
