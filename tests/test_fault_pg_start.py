"""`tandem-hub serve` on a PostgreSQL it cannot use at start: one line naming the URL (password redacted)
and the way out, exit 1, no traceback; and once the server has room again, the same command starts.

(b) nothing listens on the URL's port; (c) another client holds every connection slot (a cluster of the
test's own with max_connections=6, filled by plain psycopg connections). Real `tandem-hub serve`
processes, real PostgreSQL 15 clusters (tests/pg_fixtures.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from hub_process_fixtures import QUIET_FLAGS, serve_hub
from telemetry_fixtures import free_port

SECRET = "s3cret-pw"


def serve(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cloud_hub.cli", "serve", "--data-dir", str(data_dir), *QUIET_FLAGS, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_clear_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("tandem-hub: error:")]
    assert not [x for x in done.stderr.splitlines() if x.startswith(("\t", " "))], done.stderr  # no continuation
    return line


def test_an_unreachable_database_at_start_is_one_line_naming_it(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = serve(tmp_path / "hub", "--database-url", f"postgresql://tandem:{SECRET}@127.0.0.1:{port}/fleet")
    line = _one_clear_line(done)
    assert f"postgresql://tandem:***@127.0.0.1:{port}/fleet" in line, line
    assert "cannot connect to PostgreSQL" in line and "check that the server runs" in line, line


@pytest.mark.slow  # ~15 s: a cluster of its own, two hub starts
def test_no_free_connection_slot_at_start_says_max_connections_then_starts_once_freed(
    tmp_path: Path, private_postgres
) -> None:  # noqa: F811
    cluster = private_postgres(max_connections=6)
    url = cluster.url()
    holders = []
    try:
        while True:  # another client takes every slot (superuser's reserved ones included: we connect as one)
            try:
                holders.append(psycopg.connect(url, connect_timeout=5))
            except psycopg.OperationalError:
                break
        assert 1 <= len(holders) <= 6
        line = _one_clear_line(serve(tmp_path / "hub", "--database-url", url))
        assert "no free connection slot" in line and "max_connections" in line, line
    finally:
        for conn in holders:
            conn.close()
    with serve_hub(
        tmp_path / "hub", *QUIET_FLAGS, "--http-port", "0", "--grpc-port", "0", "--database-url", url
    ) as urls:
        assert urls["http"].startswith("http://127.0.0.1:")


@pytest.mark.slow  # ~10 s: a cluster of its own
def test_slots_taken_while_serving_are_503s_naming_max_connections_then_it_recovers(
    tmp_path: Path, private_postgres
) -> None:  # noqa: F811
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tandem.cloud_hub.auth import TokenStore
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    cluster = private_postgres(max_connections=12)
    url = cluster.url()
    keys = {"data_dir": tmp_path / "hub", "http.port": 0, "grpc.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"}
    keys |= {"telemetry.enabled": False, "rollouts.enabled": False, "storage.database_url": url}
    hub = Hub(HubConfig.from_keys(keys)).start()
    token = TokenStore(hub.db).create("ops", "read").token
    holders = []
    try:
        with httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=20) as rest:
            assert rest.get("/v1/devices").status_code == 200
            while True:  # another client takes every slot left
                try:
                    holders.append(psycopg.connect(url, connect_timeout=5))
                except psycopg.OperationalError:
                    break
            with ThreadPoolExecutor(8) as pool:  # more at once than the hub store's idle connections
                answers = list(pool.map(lambda _: rest.get("/v1/devices"), range(16)))
            codes = sorted(r.status_code for r in answers)
            print(f"held={len(holders)} answers={codes}")
            assert set(codes) <= {200, 503} and 200 in codes, codes  # the pool it has still serves
            refused = [r.json()["detail"] for r in answers if r.status_code == 503]
            assert all("no free connection slot" in d and "max_connections" in d for d in refused), refused
            for conn in holders:
                conn.close()
            holders.clear()
            with ThreadPoolExecutor(8) as pool:
                after = [r.status_code for r in pool.map(lambda _: rest.get("/v1/devices"), range(16))]
            assert after == [200] * 16, after
    finally:
        for conn in holders:
            conn.close()
        hub.stop()
