"""A hub moves from its SQLite files to PostgreSQL: `tandem-hub storage migrate`, then `tandem-hub check
--database-url`, then a hub on the URL serves what the SQLite hub had (a throwaway cluster, tests/pg_fixtures.py).
"""

from __future__ import annotations

import json

import pytest

from tandem.cloud_hub import cli
from tandem.cloud_hub.client import HubClient
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.rollouts.controller import DeviceProgress, Event, GatePolicy, Rollout
from tandem.cloud_hub.rollouts.store import RolloutStore
from tandem.cloud_hub.storage.datadir import DataDirLock
from tandem.cloud_hub.telemetry.store import TelemetryStore
from agent_fixtures import make_linear_softmax
from hub_registry_fixtures import make_model_dir
from window_fixtures import stored_window

WINDOWS = 120  # > 2 chunks of --chunk-rows 50
PASSWORD = "s3cret-pw"  # the test cluster trusts loopback: any password is accepted, none may be printed


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def _fill_a_sqlite_hub(hub_config, model_dir) -> str:
    """Registry (a model, two devices, a token), 120 telemetry windows and a rollout with events; the token."""
    hub = Hub(hub_config)
    try:
        hub.registry.register_dir(model_dir)
        hub.devices.register("cam-1", "cpu-x86", "1.0", {"site": "north"})
        hub.devices.register("cam-2", "cpu-x86", "1.0", {"site": "south"})
        token = hub.tokens.create("ops", "admin").token
    finally:
        hub.stop()
    telemetry = TelemetryStore.open(hub_config.data_dir)
    try:
        telemetry.insert_windows([stored_window("cam-1", s, 1000.0 + s) for s in range(1, WINDOWS + 1)])
    finally:
        telemetry.close()
    rollouts = RolloutStore.open(hub_config.data_dir)
    try:
        r = Rollout("r-1", "digits", "1.0.0", [1], GatePolicy(), 10.0, {"cam-1": DeviceProgress("cam-1", 0)})
        rollouts.save(r, [Event("created", {"waves": [1]})], now=10.0)
        r.status, r.wave = "completed", 1
        rollouts.save(r, [Event("wave", {"wave": 1}, "cam-1"), Event("done", {})], now=11.0)
    finally:
        rollouts.close()
    return token


def _migrate(data_dir, url, *extra: str) -> list[str]:
    return ["storage", "migrate", "--data-dir", str(data_dir), "--database-url", url, "--chunk-rows", "50", *extra]


def test_a_sqlite_hub_moves_to_postgresql_and_serves_the_same_devices_models_and_rollouts(
    hub_config, pg_url, tmp_path, capsys
):
    url = _with_password(pg_url)
    data_dir = hub_config.data_dir
    make_linear_softmax(tmp_path / "onnx" / "edge.onnx", 64, 10)  # the registry checks files and signatures only
    token = _fill_a_sqlite_hub(hub_config, make_model_dir(tmp_path / "onnx", tmp_path / "compiled" / "digits"))

    lock = DataDirLock(data_dir).acquire()  # a hub running on the dir
    try:
        assert cli.main(_migrate(data_dir, url)) == 1
        err = capsys.readouterr().err
        assert "is using this data dir" in err and "stop it" in err
    finally:
        lock.release()

    assert cli.main(_migrate(data_dir, url)) == 0
    out = capsys.readouterr().out
    assert f"ok       telemetry.telemetry_windows: {WINDOWS} rows, {WINDOWS} in target" in out
    assert "copying  telemetry.telemetry_windows: 100/120 rows" in out  # chunked, with progress
    assert "ok       hub.devices: 2 rows, 2 in target" in out and "ok       rollouts.rollouts: 1 rows" in out
    assert "row counts verified" in out and PASSWORD not in out and "***" in out

    assert cli.main(_migrate(data_dir, url)) == 1  # not into a database that has rows
    err = capsys.readouterr().err
    assert "already has rows" in err and "--replace" in err and PASSWORD not in err
    assert cli.main(_migrate(data_dir, url, "--replace", "--quiet")) == 0  # told to: same rows again, once
    assert "row counts verified" in capsys.readouterr().out

    assert cli.main(["check", "--database-url", url, "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    for schema in ("hub", "telemetry", "rollouts", "hard_examples"):
        assert f"ok       schema {schema}" in out
    assert "ok       1 manifest signature(s) verified" in out and PASSWORD not in out

    hub = Hub(hub_config.with_overrides({"storage.database_url": url})).start()
    try:
        assert hub.db.dialect.is_postgres
        client = HubClient(hub.http_url, token=token)  # the token was migrated too
        try:
            assert [m["name"] for m in client.list_models()["items"]] == ["digits"]
            devices = client.list_devices()["items"]
            assert sorted((d["device_id"], d["tags"]["site"]) for d in devices) == [
                ("cam-1", "north"),
                ("cam-2", "south"),
            ]
        finally:
            client.close()
    finally:
        hub.stop()
    rollouts = RolloutStore.open(url)
    telemetry = TelemetryStore.open(url)
    try:
        got = rollouts.get("r-1")
        assert (got.status, got.wave) == ("completed", 1)
        assert [e["kind"] for e in rollouts.events("r-1")] == ["created", "wave", "done"]
        assert telemetry.device_sequences("cam-1") == list(range(1, WINDOWS + 1))
        rollouts.save(got, [Event("note", {})], now=12.0)  # new ids follow the copied ones (identity reset)
        assert [e["kind"] for e in rollouts.events("r-1")][-1] == "note"
    finally:
        rollouts.close()
        telemetry.close()


def test_check_on_postgresql_names_an_outdated_and_a_missing_schema(pg_url, tmp_path, capsys):
    import psycopg  # after pg_url: its fixture skips (naming psycopg) where it is missing

    url = _with_password(pg_url)
    for store in (RolloutStore.open(url), TelemetryStore.open(url)):
        store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM rollouts.schema_migrations WHERE version = (SELECT MAX(version) FROM rollouts.schema_migrations)"
        )
    assert cli.main(["check", "--database-url", url, "--data-dir", str(tmp_path), "--json"]) == 1
    out = capsys.readouterr().out
    assert PASSWORD not in out
    report = json.loads(out)
    assert report["databases"]["schema telemetry"] == "ok"
    assert report["databases"]["schema rollouts"] == "outdated"
    assert report["databases"]["schema hub"] == "missing"
    assert any(line.startswith("rollouts table schema_migrations: schema version") for line in report["problems"])


def test_check_names_an_unreachable_database_without_its_password(capsys, tmp_path):
    url = f"postgresql://tandem:{PASSWORD}@127.0.0.1:1/nothing"
    assert cli.main(["check", "--database-url", url, "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "cannot connect" in out and PASSWORD not in out and "postgresql://tandem:***@127.0.0.1:1/nothing" in out


@pytest.mark.parametrize("target", ["sqlite:///x.db", "/tmp/x.db"])
def test_migrate_refuses_a_target_that_is_not_postgresql(target, tmp_path, capsys):
    assert cli.main(_migrate(tmp_path, target)) == 1
    assert "must be a postgresql://" in capsys.readouterr().err


def test_check_names_an_invalid_index(pg_url, tmp_path, capsys):
    import psycopg

    TelemetryStore.open(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a failed CREATE INDEX CONCURRENTLY leaves
        conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'telemetry.telemetry_windows_pkey'::regclass"
        )
    assert cli.main(["check", "--database-url", pg_url, "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "corrupt  schema telemetry" in out
    assert (
        "PROBLEM  telemetry table telemetry_windows: index telemetry_windows_pkey is invalid "
        "(REINDEX INDEX telemetry.telemetry_windows_pkey)" in out
    )


def test_migrate_refuses_a_store_at_another_schema_version(pg_url, tmp_path, capsys):
    import sqlite3

    data_dir = tmp_path / "hub-data"
    RolloutStore.open(data_dir).close()
    conn = sqlite3.connect(data_dir / "rollouts.sqlite")
    with conn:  # a store written by an older Tandem: its newest migration not applied yet
        conn.execute("DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)")
    conn.close()
    assert cli.main(_migrate(data_dir, pg_url)) == 1
    err = capsys.readouterr().err
    assert "rollouts.sqlite: schema version" in err and "start the hub once on this data dir" in err
