"""A full disk under the hub's data dir while agents stream telemetry.

The hub keeps serving, says so on /healthz (degraded, naming the store and the error), acknowledges
nothing it could not store (the broker keeps it), and stores every window once space returns. Real
parts: a Hub on a real tmpfs filled to ENOSPC, its REST server, a real Mosquitto and an agent's
TelemetryService with its disk outbox.
"""

from __future__ import annotations

import httpx
import numpy as np

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from telemetry_fixtures import fill, tiny_disk
from waiting import wait_for

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
WHILE_FULL = 60


def _send(service: TelemetryService, n: int) -> None:
    for _ in range(n):
        service.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
        service.flush()


def test_a_full_hub_disk_is_degraded_health_not_lost_windows(tmp_path, mosquitto):  # noqa: F811
    with tiny_disk(tmp_path / "disk", size_kb=4096) as disk:
        config = HubConfig.from_keys(
            {"data_dir": disk / "hub", "http.port": 0, "grpc.port": 0, "mqtt.url": mosquitto.url}
        )
        hub = Hub(config).start()
        agent = TelemetryService(mosquitto.url, "dev-h", MODEL, tmp_path / "agent", window_s=3600).start()
        try:
            assert hub.telemetry.ingest.wait_subscribed(10)

            def stored() -> int:
                return hub.telemetry.store.count_windows("dev-h")

            def health() -> dict:
                r = httpx.get(f"{hub.http_url}/healthz", timeout=10)
                assert r.status_code == 200  # degraded, still serving: a balancer must not pull it
                return r.json()

            _send(agent, 5)
            assert wait_for(lambda: stored() == 5, 20)
            assert health()["status"] == "ok" and health()["problems"] == []
            filler = fill(disk)
            _send(agent, WHILE_FULL)
            assert wait_for(lambda: health()["status"] == "degraded", 20), health()
            (problem,) = health()["problems"]
            assert problem.startswith("telemetry store cannot be written") and "full" in problem, problem
            assert stored() < 5 + WHILE_FULL  # nothing acknowledged without being stored: the broker holds the rest
            assert wait_for(lambda: len(agent.outbox) == 0, 20)  # the agent's side is done: the broker has them
            filler.unlink()  # space returns
            assert wait_for(lambda: stored() == 5 + WHILE_FULL, 30), stored()
            assert hub.telemetry.store.device_sequences("dev-h") == list(range(1, 5 + WHILE_FULL + 1))
            assert wait_for(lambda: health()["status"] == "ok", 10) and health()["problems"] == []
            assert hub.telemetry.ingest.stats.store_errors >= 1 and hub.telemetry.ingest.stats.duplicates == 0
        finally:
            agent.stop()
            hub.stop()
