"""What runs once in a fleet of hub replicas, and the hub service that moves it with the lease.

`HubCluster` is a hub's late service in cluster mode (started after HTTP, since rollouts need its
URL): a `LeaseKeeper` on the lease row in the hub's database; while this replica holds the lease it
runs the rollout controller (its store fenced by the lease epoch), the device-status watch, the
hard-example ingest and the drift engine with alerts and retention. Every replica, leader or not,
serves REST and gRPC, ingests its share of telemetry, answers rollout reads from the database and
hands rollout operations to the holder (cloud_hub/cluster/relay.py).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tandem.cloud_hub.cluster.fence import Fence
from tandem.cloud_hub.cluster.keeper import LeaseKeeper, LeaseTiming
from tandem.cloud_hub.cluster.lease import LeaseTable
from tandem.cloud_hub.cluster.relay import RelayClient, RelayWorker, create_args

log = logging.getLogger(__name__)

__all__ = ["LEASE_NAME", "FencedDatabase", "HubCluster", "RolloutReader"]

LEASE_NAME = "hub-singletons"


class FencedDatabase:
    """A store's database whose every transaction first passes the lease's fencing check (reads pass through)."""

    def __init__(self, inner: Any, check: Callable[[Any], None]) -> None:
        self._inner, self._check = inner, check

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._inner.transaction() as tx:
            self._check(tx)
            yield tx

    def execute(self, sql: str, params: Any = ()) -> Any:
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _store_target(hub: Any, filename: str) -> str | Path:
    """A store's database: the hub's PostgreSQL URL when it has one, else the SQLite file in its data dir."""
    url = getattr(getattr(hub.config, "storage", None), "database_url", None)
    return url or hub.config.data_dir / filename


class RolloutReader:
    """`hub.rollouts` on a replica without the lease: reads from the shared store; operations go to the lease
    holder through the request table (cloud_hub/cluster/relay.py) and come back as the holder answered."""

    def __init__(self, store: Any, leader: Callable[[], str]) -> None:
        self.store = store
        self.relay = RelayClient(store.db, leader)

    def get(self, rollout_id: str) -> Any:
        return self.store.get(rollout_id)

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> Any:
        return self.store.list(status, limit, offset)

    def events(self, rollout_id: str, limit: int = 200, after_id: int = 0) -> Any:
        self.store.get(rollout_id)
        return self.store.events(rollout_id, limit, after_id)

    def create(
        self,
        model: str,
        version: str,
        select: dict[str, str] | None = None,
        waves: Any = "5,25,100",  # list[int] | str, as RolloutService.create (`list` is a method name here)
        gates: Any = None,
        device_ids: Any = None,
    ) -> Any:
        return self.store.get(self.relay.call("create", create_args(model, version, select, waves, gates, device_ids)))

    def pause(self, rollout_id: str) -> Any:
        return self.store.get(self.relay.call("pause", {"rollout_id": rollout_id}))

    def resume(self, rollout_id: str) -> Any:
        return self.store.get(self.relay.call("resume", {"rollout_id": rollout_id}))

    def abort(self, rollout_id: str) -> Any:
        return self.store.get(self.relay.call("abort", {"rollout_id": rollout_id}))

    def rollback(self, rollout_id: str) -> Any:
        return self.store.get(self.relay.call("rollback", {"rollout_id": rollout_id}))

    def close(self) -> None:
        self.store.close()


class HubCluster:
    """The late hub service of a replica: the lease loop and the singletons it starts and stops."""

    def __init__(self, replica_id: str, timing: LeaseTiming, lease_name: str = LEASE_NAME) -> None:
        self.replica_id, self.timing, self.lease_name = replica_id, timing, lease_name
        self.keeper: LeaseKeeper | None = None
        self._hub: Any = None
        self._reader: RolloutReader | None = None
        self._running: list[tuple[str, Callable[[], None]]] = []  # (name, stop) of the singletons started

    # -- HubService -----------------------------------------------------------------------

    def start(self, hub: Any) -> None:
        self._hub = hub
        hub.cluster = self
        if hub.config.rollouts.enabled:
            from tandem.cloud_hub.rollouts.store import ROLLOUTS_DB_FILENAME, RolloutStore

            self._reader = RolloutReader(
                RolloutStore.open(_store_target(hub, ROLLOUTS_DB_FILENAME)), self._leader_words
            )
            hub.rollouts = self._reader
        self.keeper = LeaseKeeper(
            LeaseTable(hub.db),
            self.lease_name,
            self.replica_id,
            self.timing,
            self._acquired,
            self._lost,
            url=hub.config.http.public_url or hub.http_url,
        ).start()
        log.info("hub replica started replica_id=%s lease=%s", self.replica_id, self.lease_name)

    def stop(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()  # stops the singletons and hands the lease back
            self.keeper = None
        if self._hub is not None:
            if self._hub.rollouts is self._reader:
                self._hub.rollouts = None
            self._hub.cluster = None
            self._hub = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- what REST shows (GET /v1/cluster) -----------------------------------------------

    def status(self) -> dict[str, Any]:
        lease = self.keeper.current() if self.keeper is not None else None
        return {
            "replica_id": self.replica_id,
            "leader": bool(self.keeper and self.keeper.held),
            "epoch": self.keeper.epoch if self.keeper is not None else None,
            "singletons": [name for name, _ in self._running],
            "lease": None
            if lease is None
            else {
                "name": lease.name,
                "holder": lease.holder,
                "epoch": lease.epoch,
                "expires_at": lease.expires_at,
                "acquired_at": lease.acquired_at,
                "holder_url": lease.holder_url,
            },
        }

    def _leader_words(self) -> str:
        lease = self.keeper.current() if self.keeper is not None else None
        if lease is None:
            return "no replica yet"
        return f"replica {lease.holder}" + (f" at {lease.holder_url}" if lease.holder_url else "")

    # -- the keeper's callbacks (its thread) ----------------------------------------------

    def _acquired(self, epoch: int) -> None:
        hub = self._hub
        telemetry = getattr(hub, "telemetry", None)
        if telemetry is not None and hasattr(telemetry, "lead"):
            telemetry.lead()
            self._running.append(("drift", telemetry.follow))
        presence = getattr(hub, "presence", None)
        if presence is not None:
            presence.start_status_watch()
            self._running.append(("presence", presence.stop_status_watch))
        if hub.config.telemetry.enabled:
            from tandem.cloud_hub.hard_examples import HardExampleIngest, HardExampleIngestConfig

            examples = HardExampleIngest(
                HardExampleIngestConfig(hub.mqtt_url, tls=hub.mqtt_tls, max_rows=hub.config.hard_examples.max)
            )
            examples.start(hub)
            self._running.append(("hard_examples", examples.stop))
        if self._reader is not None:
            self._start_rollouts(hub, epoch)
        log.warning(
            "hub replica leads replica_id=%s epoch=%d singletons=%s",
            self.replica_id,
            epoch,
            ",".join(n for n, _ in self._running),
        )

    def _start_rollouts(self, hub: Any, epoch: int) -> None:
        from tandem.cloud_hub.rollouts.attach import HubRollouts

        assert self._reader is not None
        fence = Fence(self._reader.store.db, self.lease_name, epoch)  # from here on the old holder cannot save
        hub.rollouts = None  # attach_rollouts would stop the reader as a previous service
        rollouts = HubRollouts(tick_s=hub.config.rollouts.tick_s, watch_s=hub.config.rollouts.watch_s, tls=hub.mqtt_tls)
        try:
            rollouts.start(hub)
        except BaseException:
            hub.rollouts = self._reader
            raise
        service = hub.rollouts
        service.store.db = FencedDatabase(service.store.db, fence.check)
        relay = RelayWorker(service.store.db, service).start()  # operations other replicas were asked

        def stop() -> None:
            relay.stop()
            rollouts.stop()
            hub.rollouts = self._reader

        self._running.append(("rollouts", stop))

    def _lost(self) -> None:
        while self._running:
            name, stop = self._running.pop()
            try:
                stop()
            except Exception:
                log.exception("singleton failed to stop name=%s", name)
        log.warning("hub replica follows replica_id=%s", self.replica_id)
