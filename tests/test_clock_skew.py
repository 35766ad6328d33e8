"""Clocks an hour off: windows are filed on the hub's time, OTA deadlines are checked on it.

Hub side with real parts: Mosquitto, the hub's telemetry service on SQLite, and agents'
TelemetryServices whose clocks are an hour behind and ahead.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig
from tandem.cloud_hub.telemetry.clocks import DeviceClocks
from tandem.edge_agent.ota.hubclock import CLOCK_TOLERANCE_S, HubClock
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from waiting import wait_for

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
HOUR = 3600.0


def test_a_device_an_hour_ahead_accepts_a_fresh_command_and_rejects_a_stale_one():
    hub_now = 1_000_000.0
    clock = HubClock()
    clock.observe(hub_time=hub_now, local_time=hub_now + HOUR + 0.05)  # 50 ms delivery
    assert clock.offset_s == pytest.approx(-HOUR - 0.05)
    deadline = hub_now + 600  # the hub gave it 10 minutes
    assert clock.expired(deadline, local_now=hub_now + HOUR + 1) is None  # the device clock alone says 59 min late
    assert clock.expired(deadline, local_now=hub_now + HOUR + 600 + CLOCK_TOLERANCE_S - 1) is None
    assert clock.expired(deadline, local_now=hub_now + HOUR + 600 + CLOCK_TOLERANCE_S + 60) == pytest.approx(
        CLOCK_TOLERANCE_S + 60 - 0.05, abs=0.01
    )


def test_the_least_delayed_sample_wins():
    clock = HubClock()
    for delay in (5.0, 0.2, 3.0):
        clock.observe(hub_time=100.0, local_time=100.0 - HOUR + delay)  # a device an hour behind
    assert clock.offset_s == pytest.approx(HOUR - 0.2)
    assert HubClock().expired(10.0, local_now=11.0) is None and HubClock().expired(10.0, 200.0) is not None


def test_device_clocks_file_a_skewed_window_at_hub_time_and_a_backlog_at_its_own():
    clocks = DeviceClocks()
    now = 1_000_000.0
    assert clocks.observe("behind", end_unix=now - HOUR, received_at=now + 0.1) == pytest.approx(now)
    assert clocks.observe("ahead", end_unix=now + HOUR, received_at=now + 0.1) == pytest.approx(now + 0.1)
    # after an outage: a window that ended 300 s ago (device clock right) keeps its real time
    clocks.observe("ok", end_unix=now - 0.1, received_at=now)
    assert clocks.observe("ok", end_unix=now - 300, received_at=now + 1) == pytest.approx(now - 300 + 0.1)
    assert clocks.offsets() == {
        "behind": pytest.approx(HOUR + 0.1),
        "ahead": pytest.approx(-HOUR + 0.1),
        "ok": pytest.approx(0.1),
    }


def test_windows_of_devices_an_hour_off_are_visible_and_in_the_current_drift_window(tmp_path, mosquitto):  # noqa: F811
    hub = TelemetryIngestService(
        tmp_path / "hub", mosquitto.url, lambda name, version: None, TelemetryServiceConfig(eval_interval_s=3600)
    )
    hub.start()
    agents = []
    try:
        assert hub.ingest.wait_subscribed(10)
        for device, skew in (("behind", -HOUR), ("ahead", HOUR)):
            agent = TelemetryService(
                mosquitto.url, device, MODEL, tmp_path / device, window_s=3600, clock=lambda s=skew: time.time() + s
            ).start()
            agents.append(agent)
            for _ in range(3):
                agent.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
                agent.flush()
        assert wait_for(lambda: hub.store.count_windows() == 6, 20)
        since = time.time() - 120  # "the last two minutes" on the hub's clock
        rows, total = hub.store.list_windows(since=since, limit=50)
        assert total == 6 and {r["device_id"] for r in rows} == {"behind", "ahead"}
        offsets = hub.clocks.offsets()
        assert offsets["behind"] == pytest.approx(HOUR, abs=30) and offsets["ahead"] == pytest.approx(-HOUR, abs=30)
        bucket_s = hub.engine.config.bucket_s
        current = int(time.time() // bucket_s)
        buckets = {b for per in hub.engine._buckets.values() for b in per}
        assert buckets and all(current - 1 <= b <= current for b in buckets), (buckets, current)
    finally:
        for agent in agents:
            agent.stop()
        hub.stop()


# -- a manifest's expires_at, judged on the hub's clock (real hub, real store, real Updater) --


def test_expiry_is_judged_with_the_stated_tolerance_and_needs_a_time_zone():
    from types import SimpleNamespace

    from tandem.edge_agent.ota.errors import VerificationError
    from tandem.edge_agent.ota.verify import check_expiry

    expires = 1_000_000.0
    stamp = dt.datetime.fromtimestamp(expires, dt.timezone.utc).isoformat()
    manifest: Any = SimpleNamespace(name="m", version="1.0.0", expires_at=stamp)
    check_expiry(manifest, expires + CLOCK_TOLERANCE_S - 1, CLOCK_TOLERANCE_S)
    with pytest.raises(VerificationError, match=r"expired at .* \(121s ago on the hub.s clock, tolerance 120s\)"):
        check_expiry(manifest, expires + CLOCK_TOLERANCE_S + 1, CLOCK_TOLERANCE_S)
    with pytest.raises(VerificationError, match="has no time zone"):
        check_expiry(SimpleNamespace(name="m", version="1", expires_at="2030-01-01T00:00:00"), 0.0)  # type: ignore[arg-type]


def _expiring_in(seconds: float) -> Callable[[dict[str, Any], Path], None]:
    def edit(doc: dict[str, Any], root: Path) -> None:
        doc["expires_at"] = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat()

    return edit


@pytest.fixture(scope="module")
def expiring_hub(digits_dir, tmp_path_factory):
    """A real hub serving 1.0.0, 1.8.0 (expires in 30 min) and 1.9.0 (expired 30 min ago)."""
    from ota_fixtures import derive, ota_hub, releases

    rel = releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))
    root = tmp_path_factory.mktemp("ota-expiry")
    fresh = derive(rel["1.0.0"], root / "1.8.0", "1.8.0", _expiring_in(HOUR / 2))
    stale = derive(rel["1.0.0"], root / "1.9.0", "1.9.0", _expiring_in(-HOUR / 2))
    with ota_hub(root, (rel["1.0.0"], fresh, stale), broker=False) as env:
        env.hub.test_token = env.device_token
        env.hub.base_release = rel["1.0.0"]
        yield env.hub


def _install_on_skewed_device(hub: Any, root: Path, version: str, skew_s: float) -> list[tuple[str, str]]:
    """Run `version`'s install command on a device whose clock is `skew_s` off; the steps it published."""
    from ota_fixtures import MODEL, PROFILE

    from tandem.edge_agent.ota.download import DownloadConfig
    from tandem.edge_agent.ota.machine import WatchPolicy
    from tandem.edge_agent.ota.store import ModelStore
    from tandem.edge_agent.ota.updater import Updater, UpdaterConfig
    from tandem.edge_agent.ota.verify import manifest_digest
    from tandem.protocols.ota import OtaCommand
    from tandem.protocols.signing import load_public_key

    store = ModelStore(root)
    store.open()
    store.install_initial(hub.base_release)
    steps: list[tuple[str, str]] = []
    device_clock = lambda: time.time() + skew_s  # noqa: E731
    updater = Updater(
        store,
        load_public_key(hub.key.public_pem),
        UpdaterConfig(
            PROFILE, DownloadConfig(token=hub.test_token, attempts=2, backoff_s=0.01), WatchPolicy(watch_s=0)
        ),
        on_switch=lambda path: None,
        publish=lambda step, result, reason, health: steps.append((step, reason)),
        clock=device_clock,
    )
    issued = time.time()  # the hub's clock
    cmd = OtaCommand(
        rollout_id="ro-skew",
        action="install",
        model=MODEL,
        version=version,
        manifest_url=f"{hub.http_url}/v1/models/{MODEL}/versions/{version}/manifest",
        manifest_sha256=manifest_digest(hub.registry.manifest(MODEL, version)),
        artifact_base_url=f"{hub.http_url}/v1/artifacts",
        issued_at=issued,
        deadline=issued + 600,
        watch_s=0.0,
    )
    updater.hub_clock.observe(cmd.issued_at, device_clock())  # what OtaClient does on every command it receives
    updater.run(cmd)
    return steps


def test_a_device_an_hour_ahead_installs_a_release_that_expires_in_half_an_hour(expiring_hub, tmp_path):
    steps = _install_on_skewed_device(expiring_hub, tmp_path / "store", "1.8.0", +HOUR)
    assert steps[-1][0] == "committed", steps  # its own clock says the manifest expired 30 min ago


def test_a_device_an_hour_behind_refuses_a_release_that_expired_half_an_hour_ago(expiring_hub, tmp_path):
    steps = _install_on_skewed_device(expiring_hub, tmp_path / "store", "1.9.0", -HOUR)
    assert steps[-1][0] == "failed", steps  # its own clock says 30 min are left
    assert "expired at" in steps[-1][1] and "on the hub's clock" in steps[-1][1], steps
