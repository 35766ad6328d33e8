"""Telemetry rollups and retention: rollups equal the sums of the raw windows, redeliveries count once,
retention deletes only what is old (and already summed), drift fires from rollups once the raw windows are gone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from tandem.cloud_hub.telemetry.engine import CohortKey, DriftConfig, DriftEngine
from tandem.cloud_hub.telemetry.retention import RetentionConfigError, RetentionPolicy, TelemetryRetention
from tandem.cloud_hub.telemetry.rollup_store import RollupRangeError, rollup_resolution
from tandem.cloud_hub.telemetry.rollups import (
    HOUR,
    MINUTE,
    RollupBlobError,
    add_histograms,
    pack_counts,
    pack_histograms,
    unpack_counts,
    unpack_histograms,
    window_histograms,
)
from tandem.cloud_hub.telemetry.service import refill_engine
from tandem.cloud_hub.telemetry.store import StoredWindow, TelemetryStore
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import TelemetryWindow, encode_window

T0 = 1_800_000_000.0  # a round hour: buckets below start at T0
COHORTS = [json.dumps({"profile": p, "tags": {"site": s}}, sort_keys=True) for p in ("cpu-x86", "arm") for s in "ab"]


def make_window(device: str, seq: int, rng: np.random.Generator, shift: bool = False) -> TelemetryWindow:
    w = TelemetryWindow(
        schema_version=limits.TELEMETRY_SCHEMA_VERSION,
        device_id=device,
        sequence=seq,
        model_name="toy",
        model_version="1.0.0",
        profile="cpu-x86",
        start_unix=T0 + seq * 10.0,
        end_unix=T0 + seq * 10.0 + 10.0,
    )
    edge, cloud, degraded, error = (int(v) for v in rng.integers(0, 20, 4))
    w.requests.edge, w.requests.cloud, w.requests.edge_degraded, w.requests.error = edge, cloud, degraded, error
    w.samples = int(rng.integers(0, 100))
    w.latency_counts.extend(int(v) for v in rng.integers(0, 5, 13))
    w.latency_sum_ms = float(rng.uniform(0, 500))
    w.latency_max_ms = float(rng.uniform(0, 900))
    w.outbox_dropped_total = int(rng.integers(0, 3))
    p = np.r_[np.full(15, 0.01), np.full(5, 0.17)] if not shift else np.r_[np.full(15, 0.06), np.full(5, 0.02)]
    w.confidence_counts.extend(int(v) for v in rng.multinomial(60, p / p.sum()))
    w.class_counts.extend(int(v) for v in rng.integers(0, 9, int(rng.integers(1, 6))))
    s = w.inputs.add()
    s.input, s.summary = "x", "mean"
    s.counts.extend(int(v) for v in rng.integers(0, 9, 4))
    return w


def stored(w: TelemetryWindow, cohort: str, received_at: float) -> StoredWindow:
    return StoredWindow(w, encode_window(w), cohort, received_at)


@pytest.fixture
def store(database_target):
    """A telemetry store on each backend: SQLite, and PostgreSQL (tests/pg_fixtures.py's throwaway cluster)."""
    s = TelemetryStore.open(database_target)
    yield s
    s.close()


def raw_sums(store: TelemetryStore) -> dict[str, dict[str, float]]:
    rows = store.db.query(
        "SELECT device_id, COUNT(*) AS windows, SUM(n_edge) AS edge, SUM(n_cloud) AS cloud, "
        "SUM(n_degraded) AS edge_degraded, SUM(n_error) AS error, SUM(samples) AS samples, "
        "SUM(latency_sum_ms) AS latency_sum_ms, MAX(latency_max_ms) AS latency_max_ms "
        "FROM telemetry_windows GROUP BY device_id"
    )
    return {r.pop("device_id"): r for r in rows}


def rollup_sums(retention: TelemetryRetention, res: int) -> dict[str, dict[str, float]]:
    rows = retention.store.db.query(
        "SELECT device_id, SUM(windows) AS windows, SUM(edge) AS edge, SUM(cloud) AS cloud, "
        "SUM(edge_degraded) AS edge_degraded, SUM(error) AS error, SUM(samples) AS samples, "
        "SUM(latency_sum_ms) AS latency_sum_ms, MAX(latency_max_ms) AS latency_max_ms "
        "FROM telemetry_device_rollups WHERE res=? GROUP BY device_id",
        [res],
    )
    return {r.pop("device_id"): r for r in rows}


def cohort_histograms(retention: TelemetryRetention, res: int) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, rollup in retention.rollups.cohort_rollups(res):
        add_histograms(out.setdefault(key.cohort, {}), rollup.histograms)
    return {c: {k: v.tolist() for k, v in h.items()} for c, h in out.items()}


def assert_same(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> None:
    assert a.keys() == b.keys()
    for device in a:
        for column, value in a[device].items():
            assert b[device][column] == pytest.approx(value, rel=1e-9), (device, column)


def check_rollups_equal_raw_sums(store: TelemetryStore, seed: int, steps: list[tuple[int, bool, bool]]) -> None:
    """Device rollups at both resolutions equal SQL sums over the raw table, and cohort histograms equal the sum
    of each distinct window's histograms, whatever the batches, redeliveries and pass times."""
    rng = np.random.default_rng(seed)
    retention = TelemetryRetention(store, RetentionPolicy(settle_s=30.0, batch=3, max_batches=2))
    devices = [f"dev-{i}" for i in range(4)]
    cohort_of = {d: COHORTS[i % len(COHORTS)] for i, d in enumerate(devices)}
    seq = dict.fromkeys(devices, 0)
    now = T0
    sent: list[StoredWindow] = []
    expected: dict[str, dict[str, np.ndarray]] = {}
    for size, redeliver, run_pass in steps:
        now += float(rng.uniform(1, 200))  # receipt times rise, as one hub stamps them
        batch = []
        for _ in range(size):
            d = devices[int(rng.integers(0, len(devices)))]
            seq[d] += 1
            batch.append(stored(make_window(d, seq[d], rng), cohort_of[d], now))
        if redeliver and sent:  # an MQTT redelivery: same (device, sequence), a later receipt time
            old = sent[int(rng.integers(0, len(sent)))]
            batch.append(StoredWindow(old.window, old.payload, old.cohort, now))
        for item, new in zip(batch, store.insert_windows(batch)):
            if new:
                sent.append(item)
                add_histograms(expected.setdefault(item.cohort, {}), window_histograms(item.window))
        if run_pass:
            retention.roll_up(now)
    while retention.roll_up(now + 10 * HOUR)[2]:  # catch up (max_batches bounds one pass)
        pass
    raw = raw_sums(store)
    assert_same(raw, rollup_sums(retention, MINUTE))
    assert_same(raw, rollup_sums(retention, HOUR))
    for res in (MINUTE, HOUR):
        got = cohort_histograms(retention, res)
        assert got == {c: {k: v.tolist() for k, v in h.items()} for c, h in expected.items()}


@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(1, 12), st.booleans(), st.booleans()), min_size=1, max_size=25),
)
@settings(max_examples=25, deadline=None)
def test_rollups_equal_the_sums_of_the_raw_windows_under_redelivery_and_any_pass_timing(tmp_path_factory, seed, steps):
    """Differential, property-based (SQLite: a fresh file per example)."""
    store = TelemetryStore.open(tmp_path_factory.mktemp("db"))
    try:
        check_rollups_equal_raw_sums(store, seed, steps)
    finally:
        store.close()


def test_rollups_equal_the_sums_of_the_raw_windows_on_each_backend(store):
    """The same differential check, one fixed history, on SQLite and on PostgreSQL."""
    steps = [(5, False, False), (9, True, True), (1, True, False), (12, False, True), (7, True, True)] * 4
    check_rollups_equal_raw_sums(store, 11, steps)


def test_a_redelivered_window_is_not_counted_again_after_its_roll_up(store):
    rng = np.random.default_rng(1)
    retention = TelemetryRetention(store, RetentionPolicy(settle_s=0.0))
    w = make_window("dev-1", 1, rng)
    assert store.insert_windows([stored(w, COHORTS[0], T0 + 5)]) == [True]
    assert retention.roll_up(T0 + 100)[0] == 1
    assert store.insert_windows([stored(w, COHORTS[0], T0 + 200)]) == [False]  # the broker sends it again
    assert retention.roll_up(T0 + 300)[0] == 0
    rows = retention.rollups.device_rollups("dev-1", MINUTE, T0)
    assert [r["windows"] for r in rows] == [1]
    assert rows[0]["edge"] == w.requests.edge and rows[0]["latency_counts"] == list(w.latency_counts)


def test_retention_deletes_only_what_is_old_and_already_rolled_up(store):
    rng = np.random.default_rng(2)
    policy = RetentionPolicy(
        raw_retention_s=3600.0, minute_retention_s=2 * 3600.0, hour_retention_s=86400.0, settle_s=30.0, batch=5
    )
    retention = TelemetryRetention(store, policy)
    items = [stored(make_window("dev-1", i + 1, rng), COHORTS[0], T0 + i * 600.0) for i in range(20)]  # 3h20m
    store.insert_windows(items)
    now = T0 + 4 * 3600.0
    # a pass that may sum only one batch: the 15 older windows it did not reach must survive retention
    behind = TelemetryRetention(store, RetentionPolicy(**{**policy.__dict__, "max_batches": 1}))
    report = behind.run_once(now)
    assert (report.rolled_up, report.behind) == (5, True)
    assert store.device_sequences("dev-1") == list(range(5, 21))  # 1-4 deleted; 5 is the cursor's (kept: "<")
    report = retention.run_once(now)
    assert report.rolled_up == 15
    kept = store.device_sequences("dev-1")
    assert kept == [i + 1 for i in range(20) if T0 + i * 600.0 >= now - 3600.0]  # newer than an hour: kept
    minutes = retention.rollups.device_rollups("dev-1", MINUTE, 0)
    assert minutes and min(r["bucket"] for r in minutes) >= now - 2 * 3600.0
    hours = retention.rollups.device_rollups("dev-1", HOUR, 0)
    assert sum(r["windows"] for r in hours) == 20  # hour rows keep every window's sums
    report = retention.run_once(now + 2 * 86400.0)
    assert report.hour_deleted > 0 and not retention.rollups.device_rollups("dev-1", HOUR, 0)


def test_device_minute_rows_can_go_before_the_cohort_minute_rows_drift_needs(store):
    rng = np.random.default_rng(6)
    policy = RetentionPolicy(raw_retention_s=600.0, minute_retention_s=2 * 3600.0, device_minute_retention_s=900.0)
    retention = TelemetryRetention(store, policy)
    store.insert_windows([stored(make_window("dev-1", i + 1, rng), COHORTS[0], T0 + i * 60.0) for i in range(120)])
    now = T0 + 2 * 3600.0
    retention.run_once(now)
    minutes = [r["bucket"] for r in retention.rollups.device_rollups("dev-1", MINUTE, 0)]
    assert minutes and min(minutes) >= now - 900.0
    cohort = [k.bucket for k, _ in retention.rollups.cohort_rollups(MINUTE, 0)]
    assert min(cohort) < now - 3600.0  # the drift engine's hour of baseline is still there
    with pytest.raises(RetentionConfigError, match="device_minute_retention_s"):
        RetentionPolicy(device_minute_retention_s=0.0)


def test_drift_fires_from_cohort_rollups_once_the_raw_windows_are_gone(tmp_path):
    """65 minutes of windows matching the reference, the last 5 shifted; rolled up, raw deleted; a fresh drift
    engine filled from the rollups alone opens a confidence alert, and the same without the shift does not."""
    rng = np.random.default_rng(3)
    reference = {"confidence": {"counts": [10] * 15 + [340] * 5}}
    config = DriftConfig(span_s=300.0, baseline_s=3600.0, min_samples=200)

    def fill(device: str, shift: bool) -> DriftEngine:
        store = TelemetryStore.open(tmp_path / device)
        items = []
        for i in range(390):  # one window per 10 s
            t = T0 + i * 10.0
            items.append(stored(make_window(device, i + 1, rng, shift and t >= T0 + 3600.0), COHORTS[0], t))
        store.insert_windows(items)
        retention = TelemetryRetention(store, RetentionPolicy(raw_retention_s=60.0, settle_s=0.0))
        retention.run_once(T0 + 3900.0 + 3600.0)  # an hour later: every raw window is past its retention
        assert store.count_windows(device) == 1  # only the one the cursor rests on (summed; deleted next time)
        engine = DriftEngine(lambda name, version: {"drift_reference": reference}, config)
        windows, rows = refill_engine(engine, retention.rollups, T0)
        assert windows >= 390 and rows > 0
        store.close()
        return engine

    def opened(engine: DriftEngine) -> set[str]:
        key = CohortKey.parse("toy", "1.0.0", COHORTS[0])
        for _ in range(3):  # the hysteresis opens after 3 evaluations in a row
            ev = engine.evaluate(T0 + 3900.0)
        return {r["signal"] for r in ev.status if r["alert"] == "open" and r["profile"] == key.profile}

    assert "confidence" in opened(fill("dev-shift", shift=True))
    assert "confidence" not in opened(fill("dev-calm", shift=False))


def test_histogram_blobs_round_trip_and_refuse_corruption():
    hists = {"requests": [3, 0, 1, 0], "confidence": [0] * 18 + [5, 9], "x.mean": [0, 0, 0], "task:boxes": [2**40]}
    blob = pack_histograms(hists)
    assert {k: v.tolist() for k, v in unpack_histograms(blob).items()} == hists
    assert unpack_counts(pack_counts([4, 0, 7, 0, 0])).tolist() == [4, 0, 7, 0, 0]
    assert len(pack_counts([0] * 13)) == 1  # an idle device-minute's latency histogram: one byte
    for bad in (b"", b"\x09", blob[:-1], blob + b"\x00"):
        with pytest.raises(RollupBlobError):
            unpack_histograms(bad)
    with pytest.raises(ValueError):
        pack_counts([-1])


def test_bad_retention_settings_and_series_buckets_are_named():
    with pytest.raises(RetentionConfigError, match="raw_retention_s"):
        RetentionPolicy(raw_retention_s=10.0, settle_s=30.0)
    with pytest.raises(RetentionConfigError, match="minute_retention_s"):
        RetentionPolicy(minute_retention_s=10 * 86400.0, hour_retention_s=86400.0)
    with pytest.raises(RetentionConfigError, match="batch"):
        RetentionPolicy(batch=0)
    assert rollup_resolution(86400) == HOUR and rollup_resolution(300) == MINUTE
    with pytest.raises(RollupRangeError, match="bucket_s=90"):
        rollup_resolution(90)


def test_rest_reads_rollups_for_ranges_the_raw_windows_no_longer_hold(store):
    """The per-model series answers from raw windows while they hold the range and from the rollups once
    retention has deleted part of it, with the same sums; a device's hour rollups have their own route."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tandem.cloud_hub.errors import HubError
    from tandem.cloud_hub.telemetry import routes

    rng = np.random.default_rng(4)
    items = [stored(make_window(f"dev-{i % 3}", i // 3 + 1, rng), COHORTS[0], T0 + i * 20.0) for i in range(540)]
    store.insert_windows(items)  # 3 devices, 3 hours
    retention = TelemetryRetention(store, RetentionPolicy(raw_retention_s=3600.0, settle_s=30.0))
    app = FastAPI()
    app.state.telemetry = SimpleNamespace(store=store, rollups=retention.rollups, config=None)
    app.dependency_overrides[routes.router.dependencies[0].dependency] = lambda: None
    app.include_router(routes.router)
    app.add_exception_handler(HubError, lambda request, exc: JSONResponse({"detail": str(exc)}, exc.status))
    client = TestClient(app)
    edge = sum(it.window.requests.edge for it in items)

    def series(**params):
        return client.get("/v1/telemetry/models/toy", params={"bucket_s": 3600, **params}).json()

    before = series()
    assert before["source"] == "raw" and sum(r["edge"] for r in before["items"]) == edge
    retention.run_once(T0 + 3 * 3600.0 + 60.0)
    assert store.count_windows() < 200  # the first two hours' raw windows are gone
    after = series()
    assert after["source"] == "rollups"
    assert [(r["bucket_start"], r["windows"], r["devices"], r["edge"]) for r in after["items"]] == [
        (r["bucket_start"], r["windows"], r["devices"], r["edge"]) for r in before["items"]
    ]
    recent = client.get("/v1/telemetry/models/toy", params={"bucket_s": 60, "since": T0 + 2.5 * 3600}).json()
    assert recent["source"] == "raw" and recent["items"]
    assert client.get("/v1/telemetry/models/toy", params={"bucket_s": 90, "source": "rollups"}).status_code == 422
    hours = client.get("/v1/telemetry/devices/dev-1/rollups", params={"resolution": "hour"}).json()
    assert hours["bucket_s"] == 3600 and sum(r["windows"] for r in hours["items"]) == 180
    assert sum(r["latency_counts"][0] for r in hours["items"]) == sum(
        it.window.latency_counts[0] for it in items if it.window.device_id == "dev-1"
    )


def test_hub_config_carries_the_retentions_and_names_a_bad_one(tmp_path):
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.errors import ConfigError
    from tandem.cloud_hub.telemetry.hub_service import telemetry_config

    config = HubConfig.load(
        env={
            "TANDEM_HUB_TELEMETRY_RETENTION_S": "900",
            "TANDEM_HUB_TELEMETRY_MINUTE_RETENTION_S": "7200",
            "TANDEM_HUB_TELEMETRY_DEVICE_MINUTE_RETENTION_S": "600",
        }
    )
    policy = telemetry_config(config).retention
    assert (policy.raw_retention_s, policy.minute_retention_s, policy.device_minutes_s) == (900.0, 7200.0, 600.0)
    defaults = telemetry_config(HubConfig()).retention  # the hub's defaults: raw 5 min, device minutes 20 min
    assert (defaults.raw_retention_s, defaults.minute_retention_s, defaults.device_minutes_s) == (300, 5400, 1200)
    assert (
        telemetry_config(HubConfig.from_keys({"telemetry.device_minute_retention_s": None})).retention.device_minutes_s
        == 5400
    )
    assert policy.hour_retention_s == config.telemetry.rollup_retention_s
    with pytest.raises(ConfigError, match=r"telemetry\.minute_retention_s .*TANDEM_HUB_TELEMETRY_MINUTE_RETENTION_S"):
        HubConfig.from_keys({"telemetry.minute_retention_s": 90 * 86400.0, "telemetry.rollup_retention_s": 86400.0})
    with pytest.raises(ConfigError, match=r"telemetry\.retention_s"):
        HubConfig.from_keys({"telemetry.retention_s": 30.0})


def test_minute_rollups_must_cover_what_the_drift_engine_looks_back_on():
    from tandem.cloud_hub.telemetry.service import TelemetryServiceConfig

    with pytest.raises(RetentionConfigError, match=r"minute_retention_s: 1800 s .* 3900 s"):
        TelemetryServiceConfig(retention=RetentionPolicy(minute_retention_s=1800.0))


def test_a_pass_whose_cursor_moved_meanwhile_rolls_its_batch_back(store):
    """Two passes at once (a lease handover overlapping): the one that finds the cursor moved adds nothing."""
    from tandem.cloud_hub.telemetry.rollup_store import RollupConflictError, RollupStore

    class Overtaken(RollupStore):
        def _merge_cohorts(self, tx, rows):  # another pass commits its cursor while this one sums
            super()._merge_cohorts(tx, rows)
            tx.execute("UPDATE telemetry_rollup_cursor SET sequence = sequence + 1000 WHERE name = 'windows'")

    rng = np.random.default_rng(5)
    store.insert_windows([stored(make_window("dev-1", i + 1, rng), COHORTS[0], T0 + i) for i in range(5)])
    with pytest.raises(RollupConflictError):
        Overtaken(store.db).roll_up_batch(T0 + 100)
    assert store.db.query("SELECT COUNT(*) AS n FROM telemetry_device_rollups")[0]["n"] == 0
    honest = RollupStore(store.db)
    assert honest.cursor().sequence == 0 and honest.roll_up_batch(T0 + 100).windows == 5


def test_a_far_future_range_reads_nothing_instead_of_overflowing_the_database(store) -> None:
    """Schemathesis sent GET .../rollups?since=9.2e18: the bucket floor overflowed SQLite's INTEGER (a 500)."""
    rollups = TelemetryRetention(store, RetentionPolicy(settle_s=0.0)).rollups
    assert rollups.device_rollups("dev-1", HOUR, since=9.223372036854778e18) == []
    assert rollups.model_series("digits", None, 9.223372036854778e18, None, 60, 10) == []
