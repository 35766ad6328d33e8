"""Another session holds a lock on a table the hub writes: the hub answers in bounded time, then recovers.

Before, statements had no timeout: a REST call on a locked table hung for as long as the lock was held
(seen: a GET /v1/devices still waiting after 20 s), and each such call held one of the store's pooled
connections. Now a statement waits at most statement_timeout (30 s by default; the URL's
`options=-c statement_timeout=...` wins, as here to keep the test short) and REST answers 503 naming the
timeout and where to look. Real parts: the throwaway PostgreSQL cluster, a Hub with its REST server.
"""

from __future__ import annotations

import time

import httpx
import psycopg

from tandem.cloud_hub.auth import TokenStore
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.storage import open_database

TIMEOUT = "options=-c%20statement_timeout%3D1500"


def test_statements_are_bounded_by_default(pg_url):
    db = open_database(pg_url)
    try:
        assert db.query("SHOW statement_timeout")[0]["statement_timeout"] == "30s"  # the server's is 0: unbounded
    finally:
        db.close()
    chosen = open_database(f"{pg_url}?{TIMEOUT}")
    try:
        assert chosen.query("SHOW statement_timeout")[0]["statement_timeout"] == "1500ms"  # the operator's wins
    finally:
        chosen.close()


def test_a_locked_table_is_a_503_in_bounded_time_not_a_hung_request(tmp_path, pg_url):
    url = f"{pg_url}?{TIMEOUT}"
    config = HubConfig.from_keys(
        {
            "data_dir": tmp_path / "hub",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.url": "mqtt://127.0.0.1:1",
            "telemetry.enabled": False,
            "rollouts.enabled": False,
            "storage.database_url": url,
        }
    )
    hub = Hub(config).start()
    token = TokenStore(hub.db).create("ops", "read").token
    rest = httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
    locker = psycopg.connect(pg_url)
    try:
        assert rest.get("/v1/devices").status_code == 200
        locker.execute("LOCK TABLE hub.devices IN ACCESS EXCLUSIVE MODE")  # held until rollback
        started = time.monotonic()
        answers = [rest.get("/v1/devices") for _ in range(3)]
        took = time.monotonic() - started
        for r in answers:
            assert r.status_code == 503, r.text
            assert "statement_timeout (1500ms)" in r.json()["detail"] and "pg_locks" in r.json()["detail"], r.text
        print(f"3 calls on a locked table: {took:.1f} s")
        assert took < 3 * 1.5 + 4, took  # each bounded by the timeout, none hung
        health = httpx.get(f"{hub.http_url}/healthz", timeout=20)
        assert health.status_code == 200  # /healthz reads no locked table
        locker.rollback()  # the lock goes
        assert rest.get("/v1/devices").status_code == 200
    finally:
        locker.close()
        rest.close()
        hub.stop()
