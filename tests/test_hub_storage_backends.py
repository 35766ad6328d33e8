"""The hub's stores behave the same on SQLite and on PostgreSQL (a throwaway cluster, tests/pg_fixtures.py).

Each test runs once per backend (`database_target`): idempotent (device, sequence) ingest, transactions
that leave nothing behind when they fail, rollout state and events, the device tag filter (a JSON field),
time buckets that floor on both engines, threads sharing one store, and errors that name the database
without its password.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tandem.cloud_hub.auth import TokenStore
from tandem.cloud_hub.devices import DeviceFilter, DeviceRegistry
from tandem.cloud_hub.errors import AuthError
from tandem.cloud_hub.rollouts.controller import DeviceProgress, Event, GatePolicy, Rollout
from tandem.cloud_hub.rollouts.store import RolloutStore
from tandem.cloud_hub.storage.db import DatabaseError, Migration, open_database
from tandem.cloud_hub.storage.dialect import POSTGRESQL, SQLITE
from tandem.cloud_hub.telemetry.store import TelemetryStore
from window_fixtures import stored_window


def _hub_db(target: str | Path):
    return open_database(target if isinstance(target, str) else target / "hub.db")


def test_windows_are_stored_once_per_device_and_sequence_and_bucket_by_floor(database_target):
    store = TelemetryStore.open(database_target)
    try:
        batch = [stored_window("cam-1", s, 100.0 + s) for s in (1, 2, 3)]
        assert store.insert_windows(batch) == [True, True, True]
        assert store.insert_windows(batch[1:] + [stored_window("cam-1", 4, 119.9)]) == [False, False, True]
        assert store.device_sequences("cam-1") == [1, 2, 3, 4] and store.count_windows() == 4
        series = store.model_series("toy", bucket_s=60.0)
        # 101..119.9 all fall in the bucket that starts at 60 (a rounding CAST would file 119.9 under 120)
        assert [(r["bucket_start"], r["windows"], r["edge"]) for r in series] == [(60, 4, 12)]
        first = store.open_alert("toy", "1.0.0", "{}", "psi", {"psi": 0.3}, at=5.0)
        second = store.open_alert("toy", "1.0.0", "{}", "js", {"js": 0.4}, at=6.0)
        assert second > first
        store.close_alert(first, {"psi": 0.05}, at=7.0)
        assert [(a["id"], a["signal"]) for a in store.open_alerts()] == [(second, "js")]
        assert store.purge(before=103.5, chunk=1) == 3 and store.device_sequences("cam-1") == [4]
    finally:
        store.close()


def test_a_failed_transaction_leaves_nothing_and_a_thread_reads_its_own_writes(database_target):
    migrations = (Migration(1, "t", ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT NOT NULL)",)),)
    target = database_target if isinstance(database_target, str) else database_target / "t.db"
    db = open_database(target, migrations, schema="trial")
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with db.transaction() as tx:
                tx.execute("INSERT INTO t (v) VALUES (?)", ["lost"])
                assert db.query("SELECT v FROM t") == [{"v": "lost"}]  # same thread, same transaction
                raise RuntimeError("boom")
        assert db.query("SELECT v FROM t") == []
        ids = db.execute("INSERT INTO t (v) VALUES (?), (?)", ["a", "b%?"])
        assert ids == 2 and db.query("SELECT v FROM t WHERE v LIKE '%?' ORDER BY id") == [{"v": "b%?"}]
    finally:
        db.close()


def test_json_text_fields_read_the_same_on_both(database_target):
    migrations = (Migration(1, "j", ("CREATE TABLE j (k TEXT PRIMARY KEY, doc TEXT NOT NULL)",)),)
    target = database_target if isinstance(database_target, str) else database_target / "j.db"
    db = open_database(target, migrations, schema="trial")
    try:
        db.execute("INSERT INTO j VALUES (?, ?), (?, ?)", ["a", '["cpu-x86", "gpu"]', "b", '["cpu-arm"]'])
        has = db.dialect.json_array_has("doc")
        assert [r["k"] for r in db.query(f"SELECT k FROM j WHERE {has} ORDER BY k", ["cpu-x86"])] == ["a"]
        assert db.query(f"SELECT k FROM j WHERE {has}", ["cpu"]) == []  # whole items, not substrings
        db.execute("INSERT INTO j VALUES (?, ?)", ["c", '{"site.id": "n1", "line": "3"}'])
        field = db.dialect.json_text("doc")
        assert db.query(f"SELECT k FROM j WHERE k = 'c' AND {field} = ?", ["site.id", "n1"]) == [{"k": "c"}]
    finally:
        db.close()


def test_threads_share_a_store_and_each_window_is_stored_once(database_target):
    store = TelemetryStore.open(database_target)
    new: list[bool] = []
    lock = threading.Lock()

    def send(offset: int) -> None:
        for seq in range(1, 21):  # every thread sends the same 20 windows: redeliveries from 6 consumers
            got = store.insert_windows([stored_window("cam-9", seq, 1000.0 + seq + offset)])
            with lock:
                new.extend(got)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(new) == 20 and len(new) == 120
        assert store.device_sequences("cam-9") == list(range(1, 21))
    finally:
        store.close()


def test_rollout_state_is_upserted_with_its_events_and_statuses_count_once(database_target):
    store = RolloutStore.open(database_target)
    try:
        r = Rollout("r1", "toy", "2.0.0", [1], GatePolicy(), 10.0, {"cam-1": DeviceProgress("cam-1", 0)})
        store.save(r, [Event("created", {"n": 1})], now=10.0)
        r.status, r.wave = "completed", 1
        store.save(r, [Event("wave", {"wave": 1}, "cam-1"), Event("done", {})], now=11.0)
        assert store.get("r1").status == "completed" and store.list()[1] == 1
        events = store.events("r1")
        assert [e["kind"] for e in events] == ["created", "wave", "done"]
        assert [e["kind"] for e in store.recent_events("r1", limit=2)] == ["wave", "done"]
        assert store.targets("cam-1", "toy", "2.0.0") and not store.targets("cam-2", "toy", "2.0.0")
        assert store.first_seen("cam-1", 7) and not store.first_seen("cam-1", 7)
    finally:
        store.close()


def test_devices_keep_their_first_registration_and_filter_by_tag(database_target):
    db = _hub_db(database_target)
    now = [100.0]
    try:
        devices = DeviceRegistry(db, 90.0, clock=lambda: now[0])
        devices.register("cam-1", "cpu-x86", "1.0", {"site": "north", "line.no": "3"})
        devices.register("cam-2", "cpu-x86", "1.0", {"site": "south"})
        now[0] = 200.0
        again = devices.register("cam-1", "cpu-x86", "1.1", {"site": "north", "line.no": "3"})
        assert again.registered_at == 100.0 and again.agent_version == "1.1"
        found, total = devices.list(DeviceFilter(tags={"line.no": "3"}))
        assert total == 1 and [d.device_id for d in found] == ["cam-1"]
        assert devices.touch(["cam-1", "cam-2", "ghost"]) == 2
        assert devices.set_presence("cam-1", "online", (2, 0, 0)) and not devices.set_presence(
            "cam-1", "offline", (1, 0, 0)
        )
        tokens = TokenStore(db)
        made = tokens.create("ops", "admin")
        assert tokens.authenticate(made.token).token_id == made.info.token_id
        tokens.revoke(made.info.token_id)
        with pytest.raises(AuthError, match="revoked"):
            tokens.authenticate(made.token)
    finally:
        db.close()


def test_each_store_keeps_its_own_migrations_in_one_postgres_database(pg_url):
    from tandem.cloud_hub.hard_examples import MIGRATIONS as HARD_MIGRATIONS
    from tandem.cloud_hub.hard_examples import HardExampleStore
    from tandem.cloud_hub.rollouts.store import ROLLOUT_MIGRATIONS
    from tandem.cloud_hub.storage.db import MIGRATIONS
    from tandem.cloud_hub.telemetry.store import TELEMETRY_MIGRATIONS

    stores = [_hub_db(pg_url), TelemetryStore.open(pg_url).db, RolloutStore.open(pg_url).db]
    stores.append(HardExampleStore.open(pg_url).db)
    try:
        versions = [s.schema_version() for s in stores]
        assert versions == [
            m[-1].version for m in (MIGRATIONS, TELEMETRY_MIGRATIONS, ROLLOUT_MIGRATIONS, HARD_MIGRATIONS)
        ]
        assert "telemetry_windows" in stores[1].tables() and "telemetry_windows" not in stores[0].tables()
        again = _hub_db(pg_url)  # a second replica opening the same database migrates nothing
        assert again.schema_version() == versions[0]
        again.close()
    finally:
        for s in stores:
            s.close()


def test_an_unreachable_database_is_named_without_its_password():
    from telemetry_fixtures import free_port

    url = f"postgresql://tandem:s3cret@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(DatabaseError) as caught:
        open_database(url)
    message = str(caught.value)
    assert "s3cret" not in message and "tandem:***@127.0.0.1" in message and "storage.database_url" in message
    with pytest.raises(DatabaseError, match="mysql://u:\\*\\*\\*@h/x: not a database this hub can use"):
        open_database("mysql://u:pw@h/x")


def test_the_dialect_rewrites_ddl_and_placeholders_but_not_literals():
    ddl = "CREATE TABLE t (n INTEGER PRIMARY KEY AUTOINCREMENT, x REAL, b BLOB, k INTEGER) WITHOUT ROWID"
    assert POSTGRESQL.ddl(ddl) == (
        "CREATE TABLE t (n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, x DOUBLE PRECISION, b BYTEA, k BIGINT)"
    )
    assert SQLITE.ddl(ddl) == ddl
    assert POSTGRESQL.sql("SELECT '?%', \"a?\" FROM t WHERE v LIKE '%x' AND k=? AND j=?") == (
        "SELECT '?%%', \"a?\" FROM t WHERE v LIKE '%%x' AND k=%s AND j=%s"
    )
