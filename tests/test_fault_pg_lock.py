"""Another session holds a lock on a table the hub writes: the hub answers in bounded time, then recovers.

Before, statements had no timeout: a REST call on a locked table hung for as long as the lock was held
(seen: a GET /v1/devices still waiting after 20 s), and each such call held one of the store's pooled
connections. Now a statement waits at most statement_timeout (30 s by default; the URL's
`options=-c statement_timeout=...` wins, as here to keep the test short) and REST answers 503 naming the
timeout and where to look; telemetry ingest acknowledges nothing meanwhile, /healthz names the lock, and every
window is stored once the lock goes. Real parts: the throwaway PostgreSQL cluster, a Hub with its REST server,
a real Mosquitto and an agent's TelemetryService.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import psycopg

from tandem.cloud_hub.auth import TokenStore
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.storage import open_database
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from waiting import wait_for

TIMEOUT = "options=-c%20statement_timeout%3D1500"
REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")


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


def test_a_locked_telemetry_table_holds_windows_unacked_says_why_and_stores_them_after(tmp_path, pg_url, mosquitto):
    url = f"{pg_url}?{TIMEOUT}"
    config = HubConfig.from_keys(
        {
            "data_dir": tmp_path / "hub",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.url": mosquitto.url,
            "rollouts.enabled": False,
            "storage.database_url": url,
        }
    )
    hub = Hub(config).start()
    agent = TelemetryService(mosquitto.url, "dev-lk", MODEL, tmp_path / "agent", window_s=3600).start()
    locker = psycopg.connect(pg_url)
    try:
        assert hub.telemetry.ingest.wait_subscribed(10)

        def health() -> dict:
            r = httpx.get(f"{hub.http_url}/healthz", timeout=20)
            assert r.status_code == 200, r.text
            return r.json()

        locker.execute("LOCK TABLE telemetry.telemetry_windows IN EXCLUSIVE MODE")  # reads pass, writes wait
        for _ in range(10):
            agent.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
            agent.flush()
        assert wait_for(lambda: health()["status"] == "degraded", 15), health()
        problem = health()["problems"][0]
        assert problem.startswith("telemetry store cannot be written") and "statement_timeout" in problem, problem
        assert "pg_locks" in problem and "free space" not in problem, problem  # the way out fits the cause
        assert hub.telemetry.store.count_windows("dev-lk") == 0  # nothing stored, nothing acknowledged
        locker.rollback()
        assert wait_for(lambda: hub.telemetry.store.count_windows("dev-lk") == 10, 20)
        assert hub.telemetry.store.device_sequences("dev-lk") == list(range(1, 11))
        assert wait_for(lambda: health()["status"] == "ok", 10), health()
    finally:
        locker.close()
        agent.stop()
        hub.stop()
