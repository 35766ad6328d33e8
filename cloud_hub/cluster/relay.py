"""Rollout operations asked of any replica, carried out by the lease holder: a request table in the
rollout store, so request handling stays stateless.

A replica without the lease writes the operation (create, pause, resume, abort, rollback) as a
pending row and waits for its answer; the holder's `RelayWorker` claims pending rows one by one
(UPDATE ... WHERE state='pending': two claims cannot both win), runs them through its
RolloutService (whose saves are fenced by the lease epoch) and writes the outcome. A caller that
gives up first withdraws its row the same way, so an operation it reported as failed never runs
later. Only the rollout id and an error's status and message travel back; the caller reads the
rollout from the shared store.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

from tandem.cloud_hub.cluster.lease import _changed
from tandem.cloud_hub.errors import (
    ConflictError,
    HubError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
)

log = logging.getLogger(__name__)

__all__ = ["RELAY_TABLE", "RelayClient", "RelayWorker"]

RELAY_TABLE = "cluster_rollout_requests"
OPS = ("create", "pause", "resume", "abort", "rollback")
KEEP_S = 3600.0  # answered requests are deleted after this

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {RELAY_TABLE} (request_id TEXT PRIMARY KEY, op TEXT NOT NULL, args TEXT NOT NULL, "
    "state TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, status INTEGER, detail TEXT, rollout_id TEXT)"
)
_ERRORS: dict[int, type[HubError]] = {
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
    503: ServiceUnavailableError,
}


def _ensure_table(db: Any) -> None:
    db.ensure_schema((_SCHEMA,))


class RelayClient:
    """A follower's side: `call(op, args)` -> the rollout id, or the holder's error raised here."""

    def __init__(self, db: Any, leader: Callable[[], str], timeout_s: float = 15.0, poll_s: float = 0.05) -> None:
        self.db, self._leader, self.timeout_s, self.poll_s = db, leader, timeout_s, poll_s
        _ensure_table(db)

    def call(self, op: str, args: dict[str, Any]) -> str:
        if op not in OPS:
            raise ValueError(f"unknown rollout operation {op!r}")
        request_id = secrets.token_hex(8)
        with self.db.transaction() as tx:
            tx.execute(
                f"INSERT INTO {RELAY_TABLE} (request_id, op, args, state, created_at) VALUES (?, ?, ?, 'pending', ?)",
                [request_id, op, json.dumps(args, sort_keys=True), time.time()],
            )
        answer = self._wait(request_id, self.timeout_s)
        if answer is not None:
            return answer
        with self.db.transaction() as tx:  # withdraw it, unless the holder has claimed it meanwhile
            withdrawn = _changed(
                tx.execute(
                    f"UPDATE {RELAY_TABLE} SET state = 'withdrawn' WHERE request_id = ? AND state = 'pending'",
                    [request_id],
                )
            )
        if withdrawn:
            raise ServiceUnavailableError(
                f"no replica ran the rollout operation within {self.timeout_s:g}s ({self._leader()} holds the "
                "lease); nothing was done, retry"
            )
        answer = self._wait(request_id, self.timeout_s)  # claimed just now: it is running
        if answer is None:
            raise ServiceUnavailableError(f"the lease holder took rollout request {request_id} but gave no answer")
        return answer

    def _wait(self, request_id: str, timeout_s: float) -> str | None:
        """The rollout id once done; the holder's error raised here; None when `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.db.query(
                f"SELECT state, status, detail, rollout_id FROM {RELAY_TABLE} WHERE request_id = ?", [request_id]
            )
            if rows and rows[0]["state"] == "done":
                return str(rows[0]["rollout_id"])
            if rows and rows[0]["state"] == "error":
                raise _ERRORS.get(int(rows[0]["status"] or 500), HubError)(str(rows[0]["detail"]))
            time.sleep(self.poll_s)
        return None


class RelayWorker:
    """The lease holder's side: a thread running pending requests through `service` (a RolloutService)."""

    def __init__(self, db: Any, service: Any, poll_s: float = 0.1) -> None:
        self.db, self.service, self.poll_s = db, service, poll_s
        self.done = 0
        _ensure_table(db)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "RelayWorker":
        self._thread = threading.Thread(target=self._run, name="rollout-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        last_sweep = 0.0
        while not self._stop.wait(self.poll_s):
            try:
                self.run_pending()
                if time.monotonic() - last_sweep > 60:
                    last_sweep = time.monotonic()
                    self.db.execute(f"DELETE FROM {RELAY_TABLE} WHERE created_at < ?", [time.time() - KEEP_S])
            except Exception:
                log.exception("rollout relay failed")

    def run_pending(self) -> int:
        """Claim and run every pending request, oldest first; returns how many ran."""
        rows = self.db.query(
            f"SELECT request_id, op, args FROM {RELAY_TABLE} WHERE state = 'pending' ORDER BY created_at LIMIT 50"
        )
        ran = 0
        for row in rows:
            with self.db.transaction() as tx:
                claimed = _changed(
                    tx.execute(
                        f"UPDATE {RELAY_TABLE} SET state = 'running' WHERE request_id = ? AND state = 'pending'",
                        [row["request_id"]],
                    )
                )
            if not claimed:
                continue
            state, status, detail, rollout_id = "done", None, None, None
            try:
                rollout_id = self._run_one(str(row["op"]), json.loads(row["args"]))
            except HubError as exc:
                state, status, detail = "error", exc.status, str(exc)
            except Exception as exc:  # a bug must still answer the waiting replica
                log.exception("rollout relay request failed op=%s", row["op"])
                state, status, detail = "error", 500, f"{type(exc).__name__}: {exc}"
            with self.db.transaction() as tx:
                tx.execute(
                    f"UPDATE {RELAY_TABLE} SET state = ?, status = ?, detail = ?, rollout_id = ? WHERE request_id = ?",
                    [state, status, detail, rollout_id, row["request_id"]],
                )
            ran += 1
            self.done += 1
        return ran

    def _run_one(self, op: str, args: dict[str, Any]) -> str:
        if op == "create":
            from tandem.cloud_hub.rollouts.controller import GatePolicy

            gates = GatePolicy(**args["gates"]) if args.get("gates") is not None else None
            r = self.service.create(
                args["model"], args["version"], args.get("select"), args["waves"], gates, args.get("device_ids")
            )
            return str(r.rollout_id)
        if op in OPS:
            return str(getattr(self.service, op)(args["rollout_id"]).rollout_id)
        raise InvalidInputError(f"unknown rollout operation {op!r}")


def create_args(
    model: str,
    version: str,
    select: dict[str, str] | None,
    waves: list[int] | str,
    gates: Any,
    device_ids: list[str] | None,
) -> dict[str, Any]:
    """RolloutService.create's arguments as JSON."""
    return {
        "model": model,
        "version": version,
        "select": select,
        "waves": waves,
        "gates": asdict(gates) if gates is not None else None,
        "device_ids": device_ids,
    }
