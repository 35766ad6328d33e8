"""The hub's own Mosquitto killed -9 while agents stream telemetry (and, slow, while a rollout is in flight).

The hub restarts its broker on the same port (cloud_hub/broker_watch.py); agents and the hub reconnect;
what the broker had accepted but not saved comes back through the hub's gap requests and the agents'
replay stores: every window produced is stored once. A rollout in flight neither halts nor rolls back
for the outage. Real parts: a Hub with its own Mosquitto child (SIGKILLed), its telemetry ingest on
SQLite, agents' TelemetryServices with disk outboxes, and (slow) devices running the real OTA client.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from ota_fixtures import MODEL as OTA_MODEL
from ota_fixtures import OtaHub, SimDevice, releases, start_devices
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.telemetry.gaps import GapPolicy
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from telemetry_fixtures import MOSQUITTO, free_port
from waiting import wait_for, wait_for_rollout

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
FAST_GAPS = GapPolicy(ask_after_s=0.5, ask_every_s=1.0, max_asks=5)


def _own_broker_hub(root: Path, **keys: object) -> Hub:
    """A hub that runs its own Mosquitto (no mqtt.url) on a free port, not the stable 1883 default."""
    hub = Hub(
        HubConfig.from_keys({"data_dir": root, "http.port": 0, "grpc.port": 0, "mqtt.port": free_port(), **keys})
    ).start()
    assert hub.broker_kind == "mosquitto" and hub.broker_watch is not None
    return hub


def _kill_broker(hub: Hub) -> int:
    pid = hub._broker.process.pid
    os.kill(pid, signal.SIGKILL)
    return pid


class Traffic:
    """Agents closing a window every `every_s` from a thread each, until stopped."""

    def __init__(self, agents: list[TelemetryService], every_s: float = 0.05) -> None:
        self.agents, self.every_s = agents, every_s
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(a,), daemon=True) for a in agents]

    def _run(self, agent: TelemetryService) -> None:
        while not self._stop.is_set():
            agent.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
            agent.flush()
            self._stop.wait(self.every_s)

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def test_a_killed_hub_broker_is_restarted_and_every_window_is_stored_once(tmp_path):
    hub = _own_broker_hub(tmp_path / "hub")
    agents: list[TelemetryService] = []
    try:
        assert hub.telemetry.ingest.wait_subscribed(10)
        hub.telemetry.gaps.policy = FAST_GAPS
        for i in range(3):
            agents.append(TelemetryService(hub.mqtt_url, f"k{i}", MODEL, tmp_path / f"a{i}", window_s=3600).start())
        with Traffic(agents):
            assert wait_for(lambda: hub.telemetry.store.count_windows() >= 30, 20)
            killed = _kill_broker(hub)
            t0 = time.monotonic()
            assert wait_for(lambda: hub.broker_watch.restarts == 1, 20), hub.broker_watch.problem
            restarted_s = time.monotonic() - t0
            assert hub._broker.process.pid != killed and hub.own_broker_exit_code() is None
            body = httpx.get(f"{hub.http_url}/healthz", timeout=10).json()
            assert body["status"] == "ok" and body["problems"] == [], body
            time.sleep(1.0)  # traffic goes on over the restarted broker
        sent = {a.device_id: a.outbox.last_sequence for a in agents}

        def stored() -> dict[str, list[int]]:
            return {d: hub.telemetry.store.device_sequences(d) for d in sent}

        assert wait_for(lambda: stored() == {d: list(range(1, n + 1)) for d, n in sent.items()}, 60), (
            sent,
            {d: (len(s), sorted(set(range(1, sent[d] + 1)) - set(s))[:10]) for d, s in stored().items()},
        )
        assert restarted_s < 10
        assert hub.telemetry.ingest.stats.stored == sum(sent.values())
        assert sum(a.outbox.resend_missing for a in agents) == 0
    finally:
        for a in agents:
            a.stop()
        hub.stop()


@pytest.fixture(scope="module")
def ota_releases(digits_dir, tmp_path_factory) -> dict[str, Path]:
    return releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))


@pytest.mark.slow
def test_a_rollout_in_flight_completes_through_a_killed_hub_broker(ota_releases, digits_dir, tmp_path):
    from tandem.edge_agent.ota.machine import WatchPolicy

    hub = _own_broker_hub(
        tmp_path / "hub", **{"publishers.trust_on_first_use": True, "rollouts.tick_s": 0.1, "rollouts.watch_s": 2.0}
    )
    devices: list[SimDevice] = []
    http = None
    try:
        for path in ota_releases.values():
            hub.registry.register_dir(path)
        assert hub.rollouts.wait_subscribed(10)
        pem = tmp_path / "release.pem"
        key = hub.key.public_pem
        pem.write_text(key if isinstance(key, str) else key.decode())
        operator = hub.tokens.create("operator", "operate").token
        http = httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {operator}"}, timeout=10)
        env = OtaHub(
            hub,
            tmp_path,
            SimpleNamespace(url=hub.mqtt_url),
            pem,
            hub.tokens.create("fleet", "read").token,
            operator,
            http,
        )  # type: ignore[arg-type]
        watch = WatchPolicy(watch_s=2.0, min_requests=20, max_fallback_rise=0.3, max_latency_ratio=100.0)
        start_devices(env, devices, [f"dev-{i}" for i in range(4)], ota_releases["1.0.0"], digits_dir, watch)
        resp = http.post(
            "/v1/rollouts",
            json={
                "model": OTA_MODEL,
                "version": "1.1.0",
                "select": {"profile": "cpu-x86", "site": "lab"},
                "waves": [50, 100],
                "gates": {"min_reporting": 1.0, "wave_timeout_s": 120, "max_latency_ratio": 100.0},
            },
        )
        assert resp.status_code == 201, resp.text
        rid = resp.json()["rollout_id"]

        def in_watch() -> bool:
            states = http.get(f"/v1/rollouts/{rid}").json()["device_states"]
            return any(d["step"] == "watching" for d in states)

        assert wait_for(in_watch, 60), "no device reached its health watch"
        _kill_broker(hub)  # statuses of the watch's end are sent into the outage
        assert wait_for(lambda: hub.broker_watch.restarts == 1, 20), hub.broker_watch.problem
        body = wait_for_rollout(http, rid, ("completed", "halted"), timeout_s=120)
        assert body["status"] == "completed", body["reason"]
        assert body["counts"] == {"committed": 4}
        assert not [e for e in body["events"] if e["kind"] in ("halted", "rollback_sent")]
        assert {d.serving for d in devices} == {"1.1.0"}
    finally:
        for d in devices:
            d.stop()
        if http is not None:
            http.close()
        hub.stop()
