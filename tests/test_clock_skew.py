"""Clocks an hour off: windows are filed on the hub's time, OTA deadlines are checked on it.

Hub side with real parts: Mosquitto, the hub's telemetry service on SQLite, and agents'
TelemetryServices whose clocks are an hour behind and ahead.
"""

from __future__ import annotations

import time

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
