"""PostgreSQL crashes (postmaster SIGKILLed) and comes back while an agent streams telemetry to a hub on it.

The hub keeps serving: /healthz answers 200 'degraded' naming the database while it is away (not a 500),
REST answers 503 (retry), ingest acknowledges nothing it could not store and resumes by itself once the
server is back; every window the agent sent is stored once; the outage is logged in lines, not one
traceback per loop tick. Real parts: a throwaway PostgreSQL cluster of the test's own (crashed with
SIGKILL, restarted with pg_ctl: crash recovery), a Hub with its REST server, a real Mosquitto and an
agent's TelemetryService with its disk outbox.
"""

from __future__ import annotations

import collections
import logging
import time

import httpx
import numpy as np
import pytest

from tandem.cloud_hub.auth import TokenStore
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from waiting import wait_for

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
BEFORE, WHILE_DOWN, AFTER = 5, 40, 5
DOWN_S = 6.0  # the server stays dead this long (several ingest retries, gap ticks, presence flushes)

pytestmark = pytest.mark.slow  # ~30 s: a cluster of its own, a hub, a 6 s outage


def _send(service: TelemetryService, n: int) -> None:
    for _ in range(n):
        service.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
        service.flush()


def test_postgres_crash_and_restart_loses_no_window_and_health_says_why(tmp_path, mosquitto, private_postgres, caplog):  # noqa: F811
    cluster = private_postgres()
    url = cluster.url()
    config = HubConfig.from_keys(
        {
            "data_dir": tmp_path / "hub",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.url": mosquitto.url,
            "storage.database_url": url,
        }
    )
    hub = Hub(config).start()
    agent = TelemetryService(mosquitto.url, "dev-pg", MODEL, tmp_path / "agent", window_s=3600).start()
    token = TokenStore(hub.db).create("ops", "read").token
    rest = httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
    try:
        assert hub.telemetry.ingest.wait_subscribed(10)

        def stored() -> int:
            return hub.telemetry.store.count_windows("dev-pg")

        def health() -> dict:
            r = httpx.get(f"{hub.http_url}/healthz", timeout=20)
            assert r.status_code == 200, r.text  # degraded, still serving: a balancer must not pull it
            return r.json()

        _send(agent, BEFORE)
        assert wait_for(lambda: stored() == BEFORE, 20), stored()
        assert health()["status"] == "ok"
        caplog.clear()
        with caplog.at_level(logging.INFO):
            cluster.kill_postmaster()
            down_at = time.monotonic()
            _send(agent, WHILE_DOWN)
            assert wait_for(lambda: health()["status"] == "degraded", 10), health()
            body = health()
            assert body["problems"][0].startswith("database unreachable: "), body
            assert url in body["problems"][0] and body["schema_version"] is None, body
            devices = rest.get("/v1/devices")
            assert devices.status_code == 503, devices.text  # retry later, not a server bug
            assert "PostgreSQL" in devices.json()["detail"], devices.text
            time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
            assert hub.telemetry.ingest.stats.store_errors >= 2  # it kept retrying, acking nothing
            cluster.start_again()
            back_at = time.monotonic()
            assert wait_for(lambda: stored() == BEFORE + WHILE_DOWN, 30), hub.telemetry.store.device_sequences("dev-pg")
            resumed_s = time.monotonic() - back_at
            _send(agent, AFTER)
            total = BEFORE + WHILE_DOWN + AFTER
            assert wait_for(lambda: stored() == total, 20), stored()
            assert hub.telemetry.store.device_sequences("dev-pg") == list(range(1, total + 1))
            assert hub.telemetry.ingest.stats.duplicates == 0
            assert wait_for(lambda: health()["status"] == "ok", 20), health()
            assert rest.get("/v1/devices").status_code == 200
        tracebacks = [r for r in caplog.records if r.exc_info]
        outage_lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        print(f"stored={stored()} of {total} resumed_s={resumed_s:.1f} lines={len(outage_lines)} tb={len(tracebacks)}")
        assert len(tracebacks) <= 3, [f"{r.name}: {r.getMessage()[:150]}" for r in tracebacks]
        per_logger = collections.Counter(r.name for r in outage_lines)  # a loop says it once, not once a tick
        assert max(per_logger.values(), default=0) <= 2, [f"{r.name}: {r.getMessage()[:120]}" for r in outage_lines]
    finally:
        rest.close()
        agent.stop()
        hub.stop()
