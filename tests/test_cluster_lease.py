"""The replicas' lease, keeper and fencing on each backend (a real SQLite file; a throwaway PostgreSQL
database), each replica with its own connection (as two processes would have): one holder at a time,
takeover only after expiry, a new epoch on every take, and a deposed holder's writes refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tandem.cloud_hub.cluster import Fence, FencedOut, LeaseKeeper, LeaseTable, LeaseTiming
from tandem.cloud_hub.cluster.singletons import FencedDatabase
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.storage import HubDatabase, open_database

TTL = 6.0


def hub_db(target: str | Path) -> HubDatabase:
    """The hub's database on the backend `database_target` names (tests/pg_fixtures.py)."""
    return open_database(target, schema="hub") if isinstance(target, str) else open_database(target / "hub.db")


def tables(target: str | Path) -> tuple[LeaseTable, LeaseTable]:
    return LeaseTable(hub_db(target)), LeaseTable(hub_db(target))


def test_one_holder_until_expiry_then_the_other_with_the_next_epoch(database_target: str | Path) -> None:
    a, b = tables(database_target)
    first = a.try_acquire("singletons", "replica-a", TTL, now=100.0, url="http://a")
    assert (first.holder, first.epoch, first.holder_url) == ("replica-a", 1, "http://a")
    assert b.try_acquire("singletons", "replica-b", TTL, now=105.9).holder == "replica-a"  # not expired yet
    assert a.renew("singletons", "replica-a", 1, TTL, now=105.0)
    assert b.try_acquire("singletons", "replica-b", TTL, now=110.9).holder == "replica-a"  # renewed to 111
    taken = b.try_acquire("singletons", "replica-b", TTL, now=111.0)
    assert (taken.holder, taken.epoch) == ("replica-b", 2)
    assert not a.renew("singletons", "replica-a", 1, TTL, now=111.5)  # deposed: its renewal is refused
    assert b.renew("singletons", "replica-b", 2, TTL, now=112.0)


def test_a_restarted_replica_takes_its_own_lease_back_at_once_in_a_new_term(database_target: str | Path) -> None:
    a, _ = tables(database_target)
    assert a.try_acquire("singletons", "replica-a", TTL, now=100.0).epoch == 1
    again = a.try_acquire("singletons", "replica-a", TTL, now=101.0)
    assert (again.holder, again.epoch) == ("replica-a", 2)


def test_release_lets_a_follower_take_over_without_waiting_for_expiry(database_target: str | Path) -> None:
    a, b = tables(database_target)
    a.try_acquire("singletons", "replica-a", TTL, now=100.0)
    assert a.release("singletons", "replica-a", 1)
    assert b.try_acquire("singletons", "replica-b", TTL, now=100.5).holder == "replica-b"


def test_a_deposed_holder_cannot_write_once_the_new_epoch_has_claimed_the_store(database_target: str | Path) -> None:
    store_a, store_b = hub_db(database_target), hub_db(database_target)
    for db in (store_a, store_b):
        with db.transaction() as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS things (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    old = FencedDatabase(store_a, Fence(store_a, "singletons", 1).check)
    with old.transaction() as tx:
        tx.execute("INSERT INTO things (k, v) VALUES ('wave', '1')")
    new = FencedDatabase(store_b, Fence(store_b, "singletons", 2).check)  # the new holder claims the store
    with pytest.raises(FencedOut, match="epoch 2 has written"):
        with old.transaction() as tx:
            tx.execute("UPDATE things SET v='2-from-the-old-holder' WHERE k='wave'")
    with new.transaction() as tx:
        tx.execute("UPDATE things SET v='2' WHERE k='wave'")
    assert store_a.query("SELECT v FROM things") == [{"v": "2"}]  # the old holder's write was rolled back
    with pytest.raises(FencedOut):
        Fence(store_a, "singletons", 1)  # nor can it claim the store back


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keeper_starts_singletons_once_and_stops_them_before_the_row_expires(tmp_path: Path) -> None:
    a_table, b_table = tables(tmp_path)
    clock, log = Clock(), []
    timing = LeaseTiming(ttl_s=TTL, renew_s=1.5, poll_s=1.0, margin_s=1.0)
    a = LeaseKeeper(
        a_table, "s", "a", timing, lambda e: log.append(("a-start", e)), lambda: log.append("a-stop"), clock=clock
    )
    b = LeaseKeeper(
        b_table, "s", "b", timing, lambda e: log.append(("b-start", e)), lambda: log.append("b-stop"), clock=clock
    )
    a.step()
    b.step()
    assert log == [("a-start", 1)] and a.held and not b.held
    clock.now += 1.5
    a.step()  # renewed to 1001.5 + 6
    clock.now += 5.1  # 1006.6: past a's own validity (1001.5 + 6 - 1 margin) but before the row's expiry (1007.5)
    a.step()  # a could not renew in time (say its database stalled): it stops its singletons
    b.step()
    assert log == [("a-start", 1), "a-stop"] and not b.held  # b may not act before expiry
    clock.now = 1007.5
    b.step()
    assert log[-1] == ("b-start", 2) and b.held


def test_cluster_settings_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match=r"mqtt.url .*cluster.enabled needs an external"):
        HubConfig.from_keys({"cluster.enabled": True})
    with pytest.raises(ConfigError, match=r"cluster.replica_id .*is set but cluster.enabled is off"):
        HubConfig.from_keys({"cluster.replica_id": "a", "mqtt.url": "mqtt://127.0.0.1:1883"})
    with pytest.raises(ConfigError, match=r"cluster.replica_id"):
        HubConfig.from_keys({"cluster.enabled": True, "cluster.replica_id": "a/b", "mqtt.url": "mqtt://h:1"})
    with pytest.raises(ConfigError, match=r"cluster.renew_s"):
        HubConfig.from_keys({"cluster.enabled": True, "cluster.renew_s": 3.0, "mqtt.url": "mqtt://h:1"})


class HangingTable:
    """A lease table whose renewal hangs (a database stuck on a lock) until `release` is set."""

    def __init__(self, inner: LeaseTable) -> None:
        self.inner, self.hang, self.release = inner, threading.Event(), threading.Event()

    def try_acquire(self, *args: Any) -> Any:
        return self.inner.try_acquire(*args)

    def renew(self, *args: Any) -> bool:
        if self.hang.is_set():
            self.release.wait(10)
        return self.inner.renew(*args)

    def get(self, name: str) -> Any:
        return self.inner.get(name)


def test_the_holder_stops_its_singletons_on_time_while_a_renewal_hangs(tmp_path: Path) -> None:
    table = HangingTable(tables(tmp_path)[0])
    timing = LeaseTiming(ttl_s=1.2, renew_s=0.2, poll_s=0.1, margin_s=0.4)
    events: list[tuple[str, float]] = []
    keeper = LeaseKeeper(
        table,  # type: ignore[arg-type]
        "s",
        "a",
        timing,
        lambda epoch: events.append(("start", time.monotonic())),
        lambda: events.append(("stop", time.monotonic())),
    ).start()
    try:
        deadline = time.monotonic() + 5
        while not keeper.held and time.monotonic() < deadline:
            time.sleep(0.02)
        assert keeper.held
        table.hang.set()  # from the next renewal on, the database does not answer
        hung_at = time.monotonic()
        while len(events) < 2 and time.monotonic() - hung_at < 5:
            time.sleep(0.02)
        assert [e for e, _ in events] == ["start", "stop"]
        # stopped within the holder's own validity (renewed at most renew_s before the hang, valid ttl - margin)
        assert events[1][1] - hung_at <= timing.renew_s + timing.ttl_s - timing.margin_s + 0.3
        assert not keeper.held and not table.release.is_set()  # while the renewal still hangs
    finally:
        table.release.set()
        keeper.stop()
