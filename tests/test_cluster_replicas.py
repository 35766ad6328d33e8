"""Two hub replicas in one process on one data dir and a real Mosquitto: one holds the lease and runs the
singletons, the other serves reads and hands rollout operations to the holder; a clean stop hands the
lease over at once; a plain hub and a second replica of the same id are refused."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.storage.datadir import DataDirLockedError


def replica(data_dir: Path, mqtt_url: str, name: str) -> Hub:
    return Hub(
        HubConfig.from_keys(
            {
                "data_dir": data_dir,
                "http.port": 0,
                "mqtt.url": mqtt_url,
                "cluster.enabled": True,
                "cluster.replica_id": name,
            }
        )
    )


def wait(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # ~20 s on the shared 2-core machine: two hubs start and hand over
def test_one_replica_runs_the_singletons_the_other_serves_and_takes_over(tmp_path: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "hub"
    a = replica(data_dir, mosquitto.url, "replica-a").start()
    b = None
    try:
        assert wait(lambda: a.cluster.keeper.held, 15)
        with pytest.raises(DataDirLockedError, match=r"another hub .* several hubs on one dir run as replicas"):
            Hub(HubConfig.from_keys({"data_dir": data_dir, "mqtt.url": mosquitto.url}))
        with pytest.raises(DataDirLockedError, match="replica 'replica-a' already runs here"):
            replica(data_dir, mosquitto.url, "replica-a")
        b = replica(data_dir, mosquitto.url, "replica-b").start()
        admin = a.tokens.create("admin", "admin").token
        assert wait(lambda: "rollouts" in a.cluster.status()["singletons"], 15)
        status = httpx.get(f"{b.http_url}/v1/cluster", headers={"Authorization": f"Bearer {admin}"}).json()
        assert status["replica_id"] == "replica-b" and not status["leader"] and status["singletons"] == []
        assert status["lease"]["holder"] == "replica-a" and status["lease"]["holder_url"] == a.http_url
        assert a.cluster.status()["singletons"] == ["drift", "presence", "hard_examples", "rollouts"]
        assert b.hard_examples is None and a.hard_examples is not None
        # the follower reads rollouts from the shared store; operations run on the holder (relay table)
        answer = httpx.get(f"{b.http_url}/v1/rollouts", headers={"Authorization": f"Bearer {admin}"})
        assert answer.status_code == 200 and answer.json()["total"] == 0
        relayed = httpx.post(
            f"{b.http_url}/v1/rollouts",
            headers={"Authorization": f"Bearer {admin}"},
            json={"model": "digits", "version": "1.0.0"},
            timeout=30,
        )
        assert relayed.status_code == 404 and "digits" in relayed.json()["detail"], relayed.text
        rows = b.rollouts.store.db.query("SELECT op, state, status FROM cluster_rollout_requests")
        assert rows == [{"op": "create", "state": "error", "status": 404}]  # answered by the holder's service
        a.stop()  # a clean stop hands the lease back: no waiting for its expiry
        t0 = time.monotonic()
        assert wait(lambda: "rollouts" in b.cluster.status()["singletons"], 10)
        assert time.monotonic() - t0 < b.config.cluster.poll_s + 3.0
        assert b.cluster.status()["epoch"] == 2
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_a_replica_is_refused_on_a_data_dir_a_plain_hub_holds(tmp_path: Path) -> None:
    plain = Hub(HubConfig.from_keys({"data_dir": tmp_path / "hub", "mqtt.url": "mqtt://127.0.0.1:1"}))
    try:
        with pytest.raises(DataDirLockedError, match=r"a hub without \[cluster\] runs on this data dir"):
            replica(tmp_path / "hub", "mqtt://127.0.0.1:1", "replica-a")
    finally:
        plain.stop()
    replica(tmp_path / "hub", "mqtt://127.0.0.1:1", "replica-a").stop()  # once it is gone, the dir is free
