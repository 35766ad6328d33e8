"""Device registry: registration, heartbeats, online/offline by last-seen age, filters, pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from tandem.cloud_hub.devices import DeviceFilter, DeviceRegistry, device_status
from tandem.cloud_hub.errors import InvalidInputError, NotFoundError
from tandem.cloud_hub.hub import Hub


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hub(hub_config):
    h = Hub(hub_config)
    yield h
    h.stop()


@pytest.fixture
def registry(hub):
    return DeviceRegistry(hub.db, offline_after_s=60, known_profiles={"cpu-x86", "cpu-arm"}, clock=Clock())


def test_status_rule():
    assert device_status(100.0, 160.0, 60) == "online"
    assert device_status(100.0, 160.1, 60) == "offline"


def test_devices_go_offline_without_heartbeats_and_come_back(registry):
    registry.register("cam-1", "cpu-x86", "0.1.0", {"site": "lyon"})
    registry.register("cam-2", "cpu-arm", "0.1.0", {"site": "oslo"})
    registry.clock.now += 45
    registry.heartbeat("cam-2", model_name="digits", model_version="1.0.0")
    registry.clock.now += 30  # cam-1 silent 75 s, cam-2 30 s
    assert registry.get("cam-1").status == "offline"
    cam2 = registry.get("cam-2")
    assert cam2.status == "online" and cam2.model_version == "1.0.0"
    online, total = registry.list(DeviceFilter(status="online"))
    assert [d.device_id for d in online] == ["cam-2"] and total == 1
    offline, _ = registry.list(DeviceFilter(status="offline"))
    assert [d.device_id for d in offline] == ["cam-1"]
    registry.heartbeat("cam-1")
    assert registry.get("cam-1").status == "online"
    assert registry.counts() == {"total": 2, "online": 2, "offline": 0}


def test_re_registering_keeps_first_registration_time(registry):
    first = registry.register("cam-1", "cpu-x86", "0.1.0")
    registry.clock.now += 10
    again = registry.register("cam-1", "cpu-x86", "0.2.0")
    assert again.registered_at == first.registered_at and again.last_seen == first.last_seen + 10
    assert again.agent_version == "0.2.0"


def test_bad_registrations_name_the_field(registry):
    with pytest.raises(InvalidInputError, match="profile"):
        registry.register("cam-1", "tpu-9000", "0.1.0")
    with pytest.raises(InvalidInputError, match="device_id"):
        registry.register("../etc", "cpu-x86", "0.1.0")
    with pytest.raises(InvalidInputError, match="tags"):
        registry.register("cam-1", "cpu-x86", "0.1.0", {"bad key!": "x"})
    with pytest.raises(NotFoundError, match="not registered; devices register from their retained MQTT status"):
        registry.heartbeat("never-registered")


def test_rest_filters_and_pages(hub):
    token = hub.tokens.create("agents", "operate").token
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {token}"})
    for i in range(7):
        r = api.post(
            "/v1/devices",
            json={
                "device_id": f"dev-{i}",
                "profile": "cpu-x86" if i % 2 else "cpu-arm",
                "agent_version": "0.1.0",
                "tags": {"site": "lyon" if i < 3 else "oslo"},
            },
        )
        assert r.status_code == 201, r.text
    page = api.get("/v1/devices", params={"limit": 3, "offset": 3}).json()
    assert [d["device_id"] for d in page["items"]] == ["dev-3", "dev-4", "dev-5"] and page["total"] == 7
    lyon_x86 = api.get("/v1/devices", params={"tag": "site=lyon", "profile": "cpu-x86"}).json()
    assert [d["device_id"] for d in lyon_x86["items"]] == ["dev-1"]
    assert api.get("/v1/devices", params={"status": "online"}).json()["total"] == 7
    assert api.get("/v1/devices", params={"tag": "no-equals-sign"}).status_code == 422
    assert api.get("/v1/devices", params={"limit": 0}).status_code == 422
    r = api.post("/v1/devices/dev-1/heartbeat", json={"model_name": "digits", "model_version": "1.2.0"})
    assert r.status_code == 200 and r.json()["model_version"] == "1.2.0"
    assert api.get("/v1/devices", params={"model_version": "1.2.0"}).json()["total"] == 1
    assert api.post("/v1/devices/nope/heartbeat", json={}).status_code == 404
    assert api.delete("/v1/devices/dev-1").status_code == 204
    assert api.get("/v1/devices/dev-1").status_code == 404


def _cli_env(hub: Hub) -> dict[str, str]:
    """The CLI's environment: the hub's database URL when it keeps its state in PostgreSQL (the operator's
    TANDEM_HUB_STORAGE_DATABASE_URL), so both write the same database."""
    url = hub.config.storage.database_url
    return {**os.environ, **({"TANDEM_HUB_STORAGE_DATABASE_URL": url} if url else {})}


def test_concurrent_agents_and_a_cli_writing_the_same_database(hub_config, tmp_path):
    # 8 agents on one token send 128 requests at once: above the default per-token REST limit (not under test here)
    with Hub(hub_config.with_overrides({"http.burst": 1000.0})).start() as hub:
        token = hub.tokens.create("agents", "operate").token

        def agent(i: int) -> list[int]:
            codes = []
            with httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=20) as c:
                codes.append(
                    c.post(
                        "/v1/devices", json={"device_id": f"a-{i}", "profile": "cpu-x86", "agent_version": "0.1.0"}
                    ).status_code
                )
                for _ in range(15):
                    codes.append(c.post(f"/v1/devices/a-{i}/heartbeat", json={"model_version": "1.0.0"}).status_code)
            return codes

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(agent, i) for i in range(8)]
            # Meanwhile an operator bootstraps a token on the same data dir from another process.
            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tandem.cloud_hub.cli",
                    "tokens",
                    "create",
                    "--scope",
                    "read",
                    "--name",
                    "side",
                    "--data-dir",
                    str(hub_config.data_dir),
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=_cli_env(hub),
            )
            codes = [code for f in futures for code in f.result(timeout=120)]
        assert cli.returncode == 0, cli.stderr
        assert set(codes) == {200, 201} and codes.count(201) == 8 and len(codes) == 8 * 16
        side = json.loads(cli.stdout)["token"]
        r = httpx.get(
            f"{hub.http_url}/v1/devices", headers={"Authorization": f"Bearer {side}"}, params={"model_version": "1.0.0"}
        )
        assert r.status_code == 200 and r.json()["total"] == 8
