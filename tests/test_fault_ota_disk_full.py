"""A device's OTA store on a full disk: the update fails with the reason, the device keeps serving the
version it had, and once space returns the same release installs (resuming what was downloaded).

Real parts: a hub (HTTP artifacts, rollouts, SQLite), Mosquitto, and a device running the real OTA client
and A/B store on a real tmpfs filled to ENOSPC (mounted here; skipped where mount is not allowed).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ota_fixtures import MODEL, MOSQUITTO, SimDevice, ota_hub, releases, start_devices
from telemetry_fixtures import fill, tiny_disk
from waiting import wait_for_rollout

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")]


@pytest.fixture(scope="module")
def ota_releases(digits_dir, tmp_path_factory) -> dict[str, Path]:
    return releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))


def _rollout(http: httpx.Client) -> str:
    resp = http.post(
        "/v1/rollouts",
        json={
            "model": MODEL,
            "version": "1.1.0",
            "select": {"profile": "cpu-x86", "site": "lab"},
            "waves": [100],
            "gates": {"min_reporting": 1.0, "wave_timeout_s": 60, "max_latency_ratio": 100.0},
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["rollout_id"]


def test_an_update_onto_a_full_disk_fails_by_name_keeps_serving_and_installs_once_space_returns(
    ota_releases, digits_dir, tmp_path
):
    from tandem.edge_agent.ota.machine import WatchPolicy

    with tiny_disk(tmp_path / "disk", size_kb=16384) as disk:

        class DeviceOnDisk(SimDevice):
            def __init__(self, device_id: str, root: Path, *args: object) -> None:
                super().__init__(device_id, disk, *args)  # type: ignore[arg-type]

        settings = {"rollouts.tick_s": 0.1, "rollouts.watch_s": 0.6}
        with ota_hub(tmp_path / "env", ota_releases.values(), settings) as env:
            devices: list[SimDevice] = []
            try:
                watch = WatchPolicy(watch_s=0.6, min_requests=20, max_fallback_rise=0.3, max_latency_ratio=100.0)
                start_devices(env, devices, ["full-1"], ota_releases["1.0.0"], digits_dir, watch, make=DeviceOnDisk)
                (device,) = devices
                filler = fill(disk)
                body = wait_for_rollout(env.http, _rollout(env.http), ("halted",))
                (state,) = body["device_states"]
                reason = state["reason"]
                assert state["state"] == "failed" and "No space left on device" in reason, state
                assert "cannot write the download" in reason and "free space under the OTA store" in reason, reason
                assert str(disk) in reason  # where the space is missing
                assert device.serving == "1.0.0" and device.client.store.active_version == "1.0.0"
                assert device.client.store.previous_version is None  # nothing half-switched
                filler.unlink()  # space returns; the operator starts the release again
                body = wait_for_rollout(env.http, _rollout(env.http), ("completed", "halted"))
                assert body["status"] == "completed", body["reason"]
                assert device.serving == "1.1.0" and device.client.store.active_version == "1.1.0"
            finally:
                for d in devices:
                    d.stop()
