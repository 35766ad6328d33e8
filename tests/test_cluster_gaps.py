"""Gap tracking on hub replicas that share telemetry ($share): each replica stores only its share of a
device's windows, so a gap is what no replica stored, judged in the shared database (real SQLite file,
one connection per replica as two processes would have)."""

from __future__ import annotations

from pathlib import Path

from tandem.cloud_hub.cluster.telemetry import ReplicaGapTracker
from tandem.cloud_hub.telemetry.gaps import GapPolicy
from tandem.cloud_hub.telemetry.store import TelemetryStore

POLICY = GapPolicy(ask_after_s=5.0, ask_every_s=30.0, max_asks=3)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_window(store: TelemetryStore, device: str, seq: int) -> None:
    """A stored window row as ingest writes it (the figures do not matter to gap tracking)."""
    store.db.execute(
        "INSERT INTO telemetry_windows (device_id, sequence, model_name, model_version, profile, cohort, start_unix, "
        "end_unix, received_at, n_edge, n_cloud, n_degraded, n_error, samples, latency_sum_ms, latency_max_ms, "
        "outbox_dropped_total, payload) VALUES (?, ?, 'm', '1.0.0', 'cpu-x86', '{}', 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, ?)",
        [device, seq, b"x"],
    )


def test_windows_split_between_replicas_open_no_gap_and_a_real_gap_is_asked_for(database_target: str | Path) -> None:
    a_store, b_store = TelemetryStore.open(database_target), TelemetryStore.open(database_target)
    clock, asked = Clock(), []
    a = ReplicaGapTracker(a_store, lambda device, payload: asked.append(("a", device)), POLICY, clock)
    b = ReplicaGapTracker(b_store, lambda device, payload: asked.append(("b", device)), POLICY, clock)

    def replica(tracker: ReplicaGapTracker, store: TelemetryStore, *seqs: int) -> None:
        for s in seqs:
            store_window(store, "dev-1", s)
        tracker.note(("dev-1", s) for s in seqs)

    replica(a, a_store, 1)
    replica(b, b_store, 2)
    replica(a, a_store, 4)  # 3 is still on its way to b: a gap for now
    assert a.device_gaps("dev-1")["open"] == [3]
    replica(b, b_store, 3, 5)  # b fills the gap a opened
    replica(a, a_store, 6)
    replica(b, b_store, 8)  # 7 never arrives anywhere: a real gap
    assert b.device_gaps("dev-1")["open"] == [7] and a.device_gaps("dev-1")["open"] == [7]
    clock.now += POLICY.ask_after_s + 1
    assert a.tick() + b.tick() == 1 and len(asked) == 1  # asked once, by whichever ticked first
    replica(a, a_store, 7)  # the agent resent it; the replica that did not ask stores it
    assert b.stats()["open"] == 0 and b.stats()["lost"] == 0
    assert b_store.db.query("SELECT last_seq FROM telemetry_seq WHERE device_id='dev-1'") == [{"last_seq": 8}]


def test_a_gap_opened_in_a_race_with_the_window_committed_elsewhere_is_closed_before_any_ask(
    database_target: str | Path,
) -> None:
    a_store, b_store = TelemetryStore.open(database_target), TelemetryStore.open(database_target)
    clock, asked = Clock(), []
    a = ReplicaGapTracker(a_store, lambda device, payload: asked.append(device), POLICY, clock)
    store_window(a_store, "dev-1", 1)
    a.note([("dev-1", 1)])
    store_window(a_store, "dev-1", 3)
    a.note([("dev-1", 3)])  # opens 2
    store_window(b_store, "dev-1", 2)  # b committed 2 but its own note never closed the gap (PostgreSQL race)
    clock.now += POLICY.ask_after_s + 1
    assert a.tick() == 0 and asked == [] and a.stats()["open"] == 0
