"""Rollout operations asked of a replica without the lease run on the holder through a request table in
the shared store (on each backend, one connection per replica): answers and errors come back, a request
nobody ran in time is withdrawn and never runs later."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tandem.cloud_hub.cluster.relay import RelayClient, RelayWorker, create_args
from tandem.cloud_hub.errors import ConflictError, ServiceUnavailableError
from tandem.cloud_hub.rollouts.controller import GatePolicy
from tandem.cloud_hub.rollouts.store import RolloutStore


class Service:
    """What the worker calls: the RolloutService methods, recording what ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, object]] = []

    def create(self, model, version, select, waves, gates, device_ids):  # type: ignore[no-untyped-def]
        self.ran.append(("create", (model, version, select, waves, gates, device_ids)))
        return SimpleNamespace(rollout_id="ro-1")

    def pause(self, rollout_id: str) -> object:
        raise ConflictError(f"rollout {rollout_id} is completed; only a running rollout can be paused")


def test_operations_run_on_the_holder_and_its_answers_come_back(database_target: str | Path) -> None:
    follower_db, holder_db = RolloutStore.open(database_target).db, RolloutStore.open(database_target).db
    service = Service()
    worker = RelayWorker(holder_db, service, poll_s=0.02).start()
    try:
        client = RelayClient(follower_db, lambda: "replica a", timeout_s=10)
        gates = GatePolicy(min_reporting=1.0)
        args = create_args("digits", "1.1.0", {"site": "x"}, [50, 100], gates, ["dev-1"])
        assert client.call("create", args) == "ro-1"
        assert service.ran == [("create", ("digits", "1.1.0", {"site": "x"}, [50, 100], gates, ["dev-1"]))]
        with pytest.raises(ConflictError, match="only a running rollout can be paused"):
            client.call("pause", {"rollout_id": "ro-1"})
    finally:
        worker.stop()


def test_a_request_no_holder_ran_in_time_is_withdrawn_and_never_runs(database_target: str | Path) -> None:
    follower_db, holder_db = RolloutStore.open(database_target).db, RolloutStore.open(database_target).db
    client = RelayClient(follower_db, lambda: "no replica yet", timeout_s=0.3)
    with pytest.raises(ServiceUnavailableError, match="nothing was done, retry"):
        client.call("create", create_args("digits", "1.1.0", None, "5,25,100", None, None))
    service = Service()
    assert RelayWorker(holder_db, service).run_pending() == 0 and service.ran == []
