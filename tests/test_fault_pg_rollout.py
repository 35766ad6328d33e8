"""PostgreSQL crashes (postmaster SIGKILLed) and comes back while a rollout is in flight on a hub on it.

The rollout completes: no halt, no rollback, every device committed to the new version after exactly one
OTA command (counted on the broker), each wave opened once. Before, the rollouts worker dropped the OTA
statuses it could not store while the database was away: the wave waited for them until its timeout
and halted ('wave 1: only 0 of 2 devices reported within 120s'). Real parts: a cluster of the test's own (killed, restarted with crash recovery), a Hub with
its own Mosquitto, devices running the real OTA client (tests/ota_fixtures.py)."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

import pytest

from ota_fixtures import MODEL as OTA_MODEL
from ota_fixtures import SimDevice, ota_hub, releases, start_devices
from tandem.protocols import topics
from waiting import wait_for, wait_for_rollout

DOWN_S = 5.0

pytestmark = pytest.mark.slow  # ~60 s: compiled releases, four OTA devices, a 5 s database outage


@pytest.fixture(scope="module")
def ota_releases(digits_dir, tmp_path_factory) -> dict[str, Path]:
    return releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))


def test_a_rollout_in_flight_completes_through_a_postgres_crash(ota_releases, digits_dir, tmp_path, private_postgres):
    from tandem.edge_agent.ota.machine import WatchPolicy

    cluster = private_postgres()
    settings = {"storage.database_url": cluster.url(), "rollouts.tick_s": 0.1, "rollouts.watch_s": 2.0}
    devices: list[SimDevice] = []
    commands: collections.Counter[str] = collections.Counter()  # OTA commands per device, seen on the broker
    with ota_hub(tmp_path, ota_releases.values(), settings) as env:
        broker = urlparse(env.hub.mqtt_url)
        watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        watcher.on_message = lambda c, u, m: commands.update([topics.parse_topic(m.topic).device_id or "?"])
        watcher.connect(broker.hostname or "127.0.0.1", broker.port or 1883)
        watcher.subscribe(topics.all_devices(topics.OTA_CMD), qos=1)
        watcher.loop_start()
        try:
            http = env.http
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
            cluster.kill_postmaster()  # statuses of the watch's end arrive during the outage
            time.sleep(DOWN_S)
            cluster.start_again()
            # a call that meets a connection dead with the old server is a 503 (retry), then the pool is new
            assert wait_for(lambda: http.get(f"/v1/rollouts/{rid}").status_code == 200, 30)
            body = wait_for_rollout(http, rid, ("completed", "halted"), timeout_s=120)
            assert body["status"] == "completed", body["reason"]
            assert body["counts"] == {"committed": 4}
            kinds = [e["kind"] for e in body["events"]]
            assert "halted" not in kinds and "rollback_sent" not in kinds, kinds
            assert kinds.count("wave_opened") == 2, kinds
            assert {d.serving for d in devices} == {"1.1.0"}
            print(f"commands per device: {dict(commands)}")
            assert commands == {f"dev-{i}": 1 for i in range(4)}, commands  # none sent twice
        finally:
            watcher.loop_stop()
            watcher.disconnect()
            for d in devices:
                d.stop()
