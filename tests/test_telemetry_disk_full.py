"""A full disk under the agent's outbox: nothing swallowed, every loss counted, recovery by itself.

Real parts: a real tmpfs of a few hundred KB (mounted here; the test skips where mount
is not allowed), filled with a real file until ENOSPC, under the agent's real
TelemetryService, a real Mosquitto and the hub's real ingest writing SQLite.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from tandem.edge_agent.uplink import telemetry_status
from tandem.protocols.telemetry_codec import decode_window
from telemetry_fixtures import fill, tiny_disk
from waiting import wait_for

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")


def record(service: TelemetryService, n: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(n):
        service.record("edge", 3.0, confidence=0.9, label=1, inputs=rng.normal(size=(1, 8)).astype(np.float32))


def close_windows(service: TelemetryService, n: int) -> None:
    """Close n windows by hand (one request each), as the ticker would on time."""
    for _ in range(n):
        record(service, 1)
        with service._lock:
            service._hand_off(service.aggregator.close(time.time()))
        service._wake.set()


def close_until_failing(service: TelemetryService, limit: int = 2000) -> int:
    """Close windows until an outbox write fails (WAL pages already allocated absorb the first few); how many."""
    for n in range(1, limit + 1):
        close_windows(service, 1)
        if wait_for(lambda: service.write_error is not None or not service._closed, 5) and service.write_error:
            return n
    raise AssertionError("the outbox never failed on a full disk")


def hub_sequences(hub: TelemetryIngestService, device: str) -> list[int]:
    return hub.store.device_sequences(device)


@pytest.fixture
def hub(tmp_path, mosquitto):  # noqa: F811
    svc = TelemetryIngestService(
        tmp_path / "hub", mosquitto.url, lambda name, version: None, TelemetryServiceConfig(eval_interval_s=3600)
    )
    svc.start()
    assert svc.ingest.wait_subscribed(10)
    yield svc
    svc.stop()


def test_full_disk_holds_windows_and_recovers_without_a_gap(tmp_path, mosquitto, hub):  # noqa: F811
    with tiny_disk(tmp_path / "disk") as disk:
        service = TelemetryService(mosquitto.url, "dev-full", MODEL, disk / "agent", window_s=3600).start()
        try:
            close_windows(service, 3)
            assert wait_for(lambda: hub_sequences(hub, "dev-full") == [1, 2, 3], 20)
            filler = fill(disk)
            stored_full = close_until_failing(service) - 1  # these still fitted in the WAL
            close_windows(service, 4)
            status = telemetry_status(service)
            assert status["write_error"] and status["unstored"] >= 1 and status["lost_local"] == 0
            assert service.degraded and "unwritable" in service.degraded
            assert service.outbox.last_sequence == 3 + stored_full  # what failed used no number
            filler.unlink()  # space returns
            assert wait_for(lambda: service.write_error is None and len(service._closed) == 0, 20), "never recovered"
            last = 3 + stored_full + 5
            assert wait_for(lambda: hub_sequences(hub, "dev-full") == list(range(1, last + 1)), 20)
            assert service.unstored_dropped == 0 and service.write_failures >= 1
        finally:
            service.stop()


def test_full_disk_past_the_memory_bound_skips_sequences_and_counts_the_loss(tmp_path, mosquitto, hub):  # noqa: F811
    with tiny_disk(tmp_path / "disk") as disk:
        service = TelemetryService(
            mosquitto.url, "dev-lost", MODEL, disk / "agent", window_s=3600, unstored_max=2
        ).start()
        try:
            close_windows(service, 2)
            assert wait_for(lambda: hub_sequences(hub, "dev-lost") == [1, 2], 20)
            filler = fill(disk)
            before = 2 + close_until_failing(service) - 1
            close_windows(service, 4)  # 5 closed while full, 2 held: the 3 oldest are lost
            assert service.unstored_dropped == 3 and len(service._closed) == 2
            filler.unlink()
            assert wait_for(lambda: service.write_error is None and len(service._closed) == 0, 20), "never recovered"
            # the hub sees exactly the gap, and the window after it says the gap is a counted drop
            expected = list(range(1, before + 1)) + [before + 4, before + 5]
            assert wait_for(lambda: hub_sequences(hub, "dev-lost") == expected, 20), hub_sequences(hub, "dev-lost")
            (payload,) = hub.store.device_payloads(["dev-lost"], 0)[before : before + 1]
            assert decode_window(payload).outbox_dropped_total == 3
            assert telemetry_status(service)["lost_local"] == 3
        finally:
            service.stop()


def test_hard_examples_on_a_full_disk_are_counted_not_a_rollback_error(tmp_path):
    from tandem.edge_agent.hard_examples import HardExampleQueue

    with tiny_disk(tmp_path / "disk", size_kb=512) as disk:
        queue = HardExampleQueue(disk / "hard.sqlite", max_rows=1000)
        try:
            x = {"x": np.ones((1, 64), np.float32)}
            queue.put(x, request_id="r0", model="toy", version="1", label=1, confidence=0.1, source="edge")
            queue.flush(5)
            assert queue.depth() == 1
            filler = fill(disk)
            for i in range(40):  # WAL pages already allocated may take a few; the rest must fail, counted
                queue.put(x, request_id=f"r{i + 1}", model="toy", version="1", label=1, confidence=0.1, source="edge")
            assert wait_for(lambda: queue.write_error is not None, 20), "hard example write failure never noticed"
            assert "rollback" not in queue.write_error and queue.degraded
            assert wait_for(lambda: queue._pending.unfinished_tasks == 0, 20)
            assert queue.depth() + queue.write_failed == 41 and queue.dropped() == queue.write_failed
            filler.unlink()
            queue.put(x, request_id="after", model="toy", version="1", label=1, confidence=0.1, source="edge")
            assert wait_for(lambda: queue.write_error is None, 20), "never recovered"
        finally:
            queue.close()
            os.sync()
