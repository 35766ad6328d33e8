"""A wall clock that jumps (an NTP step, an RTC reset) while the agent streams telemetry.

Real parts: Mosquitto, the hub's telemetry ingest on SQLite and the agent's TelemetryService, whose
wall clock is stepped an hour back mid-stream (injected: the test must not move the machine's clock).
A window is a duration: a clock stepped back must not hold it open for the hour it went back.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from tandem.edge_agent.telemetry.window import WindowAggregator, WindowConfig
from tandem.protocols.telemetry_codec import decode_window
from waiting import wait_for

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
HOUR = 3600.0


def test_a_window_is_due_when_the_clock_went_back_and_ends_no_earlier_than_it_started():
    agg = WindowAggregator("d", MODEL, config=WindowConfig(window_s=10.0), now=1_000_000.0)
    assert not agg.due(1_000_005.0)
    agg.record("edge", 1.0, 0.9, 1)
    assert agg.due(1_000_000.0 - HOUR), "a clock stepped back an hour held the window open"
    w = agg.close(1_000_000.0 - HOUR)
    assert w is not None and w.samples == 1 and w.end_unix >= w.start_unix
    assert not agg.due(1_000_000.0 - HOUR + 5.0) and agg.due(1_000_000.0 - HOUR + 10.0)  # timed from the new clock


def test_telemetry_keeps_flowing_after_the_agent_clock_steps_an_hour_back(tmp_path, mosquitto):  # noqa: F811
    hub = TelemetryIngestService(
        tmp_path / "hub", mosquitto.url, lambda name, version: None, TelemetryServiceConfig(eval_interval_s=3600)
    )
    hub.start()
    offset = [0.0]
    agent = TelemetryService(
        mosquitto.url, "jumpy", MODEL, tmp_path / "agent", window_s=1.0, clock=lambda: time.time() + offset[0]
    )
    stop = threading.Event()
    recorded = [0]

    def traffic() -> None:
        while not stop.is_set():
            agent.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
            recorded[0] += 1
            stop.wait(0.02)

    sender = threading.Thread(target=traffic, daemon=True)
    try:
        assert hub.ingest.wait_subscribed(10)
        agent.start()
        sender.start()
        assert wait_for(lambda: hub.store.count_windows() >= 2, 20), "no windows before the jump"
        offset[0] = -HOUR
        before = hub.store.count_windows()
        # 1 s windows: a few more must arrive in seconds, not after the hour the clock went back
        assert wait_for(lambda: hub.store.count_windows() >= before + 3, 20), (
            f"telemetry stalled after the clock went back: {hub.store.count_windows() - before} windows since"
        )
        stop.set()
        sender.join(5)
        agent.flush()
        sent = agent.outbox.last_sequence
        assert wait_for(lambda: hub.store.device_sequences("jumpy") == list(range(1, sent + 1)), 20)
        payloads = hub.store.device_payloads(["jumpy"], 0)
        windows = [decode_window(p) for p in payloads]
        assert sum(w.samples for w in windows) == recorded[0], "requests counted != requests recorded"
        assert all(w.end_unix >= w.start_unix for w in windows)
    finally:
        stop.set()
        agent.stop()
        hub.stop()


@pytest.mark.parametrize("jump", [HOUR, 30 * 24 * HOUR])
def test_a_clock_stepped_forward_closes_the_window_once(jump):
    agg = WindowAggregator("d", MODEL, config=WindowConfig(window_s=10.0), now=1_000_000.0)
    agg.record("edge", 1.0, 0.9, 1)
    assert agg.due(1_000_000.0 + jump)
    assert agg.close(1_000_000.0 + jump) is not None
    assert not agg.due(1_000_000.0 + jump + 1.0)
