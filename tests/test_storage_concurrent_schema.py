"""Replicas starting at once on a fresh database: the stores' idempotent DDL (indexes, rollup, gap and lease
tables created on open) must not race. On PostgreSQL, concurrent CREATE ... IF NOT EXISTS of one name fails
with a duplicate key in pg_class/pg_type; seen when bench/scale.py started two replicas together."""

from __future__ import annotations

import threading
from pathlib import Path

from tandem.cloud_hub.cluster.lease import LeaseTable
from tandem.cloud_hub.telemetry.rollup_store import RollupStore
from tandem.cloud_hub.telemetry.store import TelemetryStore

OPENERS = 6


def _open_all_at_once(target: str | Path) -> list[BaseException]:
    barrier = threading.Barrier(OPENERS, timeout=60)
    errors: list[BaseException] = []
    stores: list[TelemetryStore] = []
    guard = threading.Lock()

    def open_one() -> None:
        try:
            barrier.wait()
            store = TelemetryStore.open(target)
            RollupStore(store.db)
            LeaseTable(store.db)
            with guard:
                stores.append(store)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            with guard:
                errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(OPENERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for store in stores:
        store.close()
    assert not any(thread.is_alive() for thread in threads), "an opener hung"
    return errors


def test_stores_opened_at_once_on_a_fresh_database_all_succeed(database_target: str | Path) -> None:
    errors = _open_all_at_once(database_target)
    assert errors == [], f"{len(errors)} of {OPENERS} openers failed: {errors[0]!r}"
