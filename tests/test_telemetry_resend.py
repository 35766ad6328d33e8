"""End-to-end delivery: windows a broker acknowledged and then lost (SIGKILL before it saved them)
are found missing by the hub's sequence tracking, asked for on the device's resend topic and
sent again from the agent's replay store; past the replay bounds the loss is counted on both sides.

Real parts: Mosquitto (SIGKILLed and restarted on its port), the hub's telemetry service on a
real SQLite file, the agent's TelemetryService.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig
from tandem.cloud_hub.telemetry.gaps import GapPolicy
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from tandem.edge_agent.uplink import telemetry_status
from tandem.protocols.resend import ResendDecodeError, ResendRequest, decode_resend
from waiting import wait_for

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")
FAST = GapPolicy(ask_after_s=0.5, ask_every_s=1.0, max_asks=2)


def _hub(path, url) -> TelemetryIngestService:
    hub = TelemetryIngestService(
        path, url, lambda name, version: None, TelemetryServiceConfig(eval_interval_s=3600, gaps=FAST, gap_tick_s=0.2)
    )
    hub.start()
    assert hub.ingest.wait_subscribed(10)
    return hub


def _close(service: TelemetryService, n: int) -> None:
    for _ in range(n):
        service.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
        service.flush()


def _lose_three_windows_in_the_broker(tmp_path, mosquitto, service) -> TelemetryIngestService:  # noqa: F811
    hub = _hub(tmp_path / "hub", mosquitto.url)
    _close(service, 3)
    assert wait_for(lambda: hub.store.device_sequences("dev-r") == [1, 2, 3], 20)
    hub.stop()  # the hub is away: the broker queues for its session
    _close(service, 3)  # 4-6: acknowledged by the broker, so gone from the outbox
    assert wait_for(lambda: len(service.outbox) == 0, 20)
    mosquitto.proc.send_signal(signal.SIGKILL)  # before it saved them
    mosquitto.proc.wait(10)
    mosquitto.start()
    hub = _hub(tmp_path / "hub", mosquitto.url)
    assert wait_for(lambda: service.publisher.connected, 20)
    _close(service, 1)  # 7 arrives: 4-6 are a gap
    return hub


def test_windows_a_killed_broker_lost_are_asked_for_and_sent_again(tmp_path, mosquitto):  # noqa: F811
    service = TelemetryService(mosquitto.url, "dev-r", MODEL, tmp_path / "agent", window_s=3600).start()
    hub = None
    try:
        hub = _lose_three_windows_in_the_broker(tmp_path, mosquitto, service)
        assert wait_for(lambda: hub.store.device_sequences("dev-r") == list(range(1, 8)), 30), (
            hub.store.device_sequences("dev-r"),
            hub.gaps.stats(),
        )
        stats = hub.gaps.stats()
        assert stats["open"] == 0 and stats["lost"] == 0 and stats["recovered_since_start"] == 3
        assert stats["resend_requests"] >= 1
        replay = telemetry_status(service)["replay"]
        assert replay["resent"] == 3 and replay["resend_missing"] == 0
        assert abs(telemetry_status(service)["clock_offset_s"]) < 5  # same host: about zero
    finally:
        if hub is not None:
            hub.stop()
        service.stop()


def test_past_the_replay_bounds_the_loss_is_counted_on_both_sides(tmp_path, mosquitto):  # noqa: F811
    service = TelemetryService(
        mosquitto.url, "dev-r", MODEL, tmp_path / "agent", window_s=3600, replay_s=0
    ).start()  # keeps nothing to resend
    hub = None
    try:
        hub = _lose_three_windows_in_the_broker(tmp_path, mosquitto, service)
        assert wait_for(lambda: hub.gaps.stats()["lost"] == 3, 30), hub.gaps.stats()
        assert hub.store.device_sequences("dev-r") == [1, 2, 3, 7]
        assert hub.gaps.device_gaps("dev-r") == {
            "device_id": "dev-r",
            "last_sequence": 7,
            "open": [],
            "lost": [4, 5, 6],
        }
        assert wait_for(lambda: telemetry_status(service)["replay"]["resend_missing"] >= 3, 10)
        assert telemetry_status(service)["replay"]["resent"] == 0
    finally:
        if hub is not None:
            hub.stop()
        service.stop()


def test_resend_requests_are_bounded_and_checked():
    assert decode_resend(ResendRequest((4, 5), 12.5).encode()) == ResendRequest((4, 5), 12.5)
    for bad in (
        b"{}",
        b"not json",
        b'{"sequences": [0], "hub_time": 1}',
        b'{"sequences": "1", "hub_time": 1}',
        b'{"sequences": [true], "hub_time": 1}',
        b"x" * 20000,
    ):
        with pytest.raises(ResendDecodeError):
            decode_resend(bad)
    with pytest.raises(ResendDecodeError):
        ResendRequest(tuple(range(1, 1002)), 0.0).encode()
    time.sleep(0)
