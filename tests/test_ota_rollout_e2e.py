"""End to end: a real hub (HTTP artifacts with Range, SQLite, signing key), real Mosquitto, and
simulated devices running the real OTA client, A/B store and models loaded through load_session."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from ota_fixtures import MODEL, MOSQUITTO, SimDevice, ota_hub, releases, start_devices
from waiting import wait_for_rollout

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")]

N_DEVICES = 8


@pytest.fixture(scope="module")
def ota_releases(digits_dir, tmp_path_factory) -> dict[str, Path]:
    return releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))


@pytest.fixture(scope="module")
def fleet(ota_releases, digits_dir, tmp_path_factory):
    from tandem.edge_agent.ota.machine import WatchPolicy

    root = tmp_path_factory.mktemp("ota-fleet")
    settings = {"rollouts.tick_s": 0.1, "rollouts.watch_s": 0.6}
    with ota_hub(root, ota_releases.values(), settings) as env:
        hub = env.hub
        devices: list[SimDevice] = []
        try:
            # latency is left loose here: two shared CPU cores make sub-millisecond p95 ratios noisy
            watch = WatchPolicy(watch_s=0.6, min_requests=20, max_fallback_rise=0.3, max_latency_ratio=100.0)
            ids = [f"dev-{i:02d}" for i in range(N_DEVICES)]
            start_devices(env, devices, ids, ota_releases["1.0.0"], digits_dir, watch)
            yield hub, devices, env.http
        finally:
            for d in devices:
                d.stop()  # then ota_hub stops the hub (rollouts first, in reverse start order) and the broker


def _start(http: httpx.Client, version: str) -> str:
    resp = http.post(
        "/v1/rollouts",
        json={
            "model": MODEL,
            "version": version,
            "select": {"profile": "cpu-x86", "site": "lab"},
            "waves": [25, 50, 100],
            "gates": {"min_reporting": 1.0, "wave_timeout_s": 60, "max_latency_ratio": 100.0},
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["rollout_id"]


def _wave_devices(body: dict, wave: int) -> set[str]:
    return {d["device_id"] for d in body["device_states"] if d["wave"] == wave}


def test_good_model_rolls_out_through_three_waves_to_every_device(fleet):
    hub, devices, http = fleet
    rid = _start(http, "1.1.0")
    body = wait_for_rollout(http, rid, ("completed",))
    opened = [e for e in body["events"] if e["kind"] == "wave_opened"]
    assert [e["detail"]["percent"] for e in opened] == [25, 50, 100]
    assert [len(_wave_devices(body, w)) for w in (1, 2, 3)] == [2, 2, 4]
    assert body["counts"] == {"committed": N_DEVICES}
    assert {d.serving for d in devices} == {"1.1.0"}
    assert all(d.client.store.active_version == "1.1.0" and d.client.store.previous_version == "1.0.0" for d in devices)
    # every step was recorded, and the console lists the rollout
    steps = {e["detail"]["step"] for e in body["events"] if e["kind"] == "device_step"}
    assert {"downloading", "verifying", "staged", "self_test", "switched", "watching", "committed"} <= steps
    assert rid in [r["rollout_id"] for r in http.get("/v1/rollouts").json()["items"]]
    assert hub.devices.get(devices[0].device_id).model_version == "1.1.0"


@pytest.mark.parametrize("version, why", [("1.2.0", "self-test"), ("1.3.0", "fallback rate")])
def test_bad_model_halts_at_first_wave_and_devices_end_on_previous_version(fleet, version, why):
    hub, devices, http = fleet
    before = {d.device_id: d.serving for d in devices}
    assert set(before.values()) == {"1.1.0"}, "runs after the good rollout"
    rid = _start(http, version)
    body = wait_for_rollout(
        http,
        rid,
        ("halted",),
        settle=lambda b: all(d["state"] in ("failed", "rolled_back", "pending") for d in b["device_states"]),
    )
    assert why in body["reason"]
    wave1 = _wave_devices(body, 1)
    assert len(wave1) == 2
    # nobody past the first wave was sent anything
    assert all(d["state"] == "pending" for d in body["device_states"] if d["device_id"] not in wave1)
    time.sleep(0.3)
    assert {d.device_id: d.serving for d in devices} == before
    assert all(d.client.store.active_version == "1.1.0" for d in devices)
    got_it = [d for d in devices if d.device_id in wave1]
    # served and rolled back for health (1.3.0) or never switched to: either way not banned, the
    # anti-rollback floor rises only on commit, so an operator may retry the same version
    assert all(d.client.store.state.max_accepted == "1.1.0" for d in got_it)
