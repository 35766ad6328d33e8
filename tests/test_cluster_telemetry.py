"""Drift on hub replicas: each replica stores a share of the windows, so the lease holder's engine reads every
replica's windows from the shared database: all of them once on taking the lease, then those stored since
at each evaluation, none twice; a follower's engine holds nothing (on each backend)."""

from __future__ import annotations

import time
from pathlib import Path

from tandem.cloud_hub.cluster.telemetry import ReplicaTelemetryService
from tandem.cloud_hub.telemetry.service import TelemetryServiceConfig
from tandem.cloud_hub.telemetry.store import StoredWindow, TelemetryStore
from window_fixtures import stored_window


def stored(device: str, seq: int, received_at: float) -> StoredWindow:
    return stored_window(device, seq, received_at, edge=10)


def engine_windows(service: ReplicaTelemetryService) -> int:
    """Windows the drift engine holds, over every cohort and bucket."""
    return sum(c.windows for per in service.engine._buckets.values() for c in per.values())


def test_the_lease_holder_feeds_its_engine_every_replicas_windows_once(database_target: str | Path) -> None:
    other = TelemetryStore.open(database_target)  # another replica's writes
    service = ReplicaTelemetryService(
        database_target, "mqtt://127.0.0.1:1", lambda name, version: None, TelemetryServiceConfig(eval_interval_s=3600)
    )
    try:
        now = time.time()
        other.insert_windows([stored("dev-a", s, now - 30 + s) for s in range(1, 6)])
        service.store.insert_windows([stored("dev-b", s, now - 30 + s) for s in range(1, 4)])
        assert engine_windows(service) == 0 and not service.leading  # a follower evaluates nothing
        service.lead()
        assert service.leading and engine_windows(service) == 8
        assert service._feed(time.time()) == 0  # what the takeover read is not added again
        other.insert_windows([stored("dev-a", 6, time.time()), stored("dev-c", 1, time.time() - 2)])
        assert service._feed(time.time()) == 2 and engine_windows(service) == 10
        assert service._feed(time.time()) == 0 and engine_windows(service) == 10
        service.follow()
        assert not service.leading and engine_windows(service) == 0
    finally:
        service.store.close()
        other.close()
