"""End-to-end delivery on the hub's side: per-device sequence tracking, gaps, resend requests, final losses.

A device numbers its windows 1, 2, 3, ... and the hub stores them by (device, sequence).
The broker's PUBACK only tells the device the broker has a window, so a broker that dies
before saving it (SIGKILL), or drops it past a queue bound, would lose it silently. Here a
number that is skipped opens a gap; a gap still open `ask_after_s` later (reordering and
redelivery fill most of them first) is asked for on the device's telemetry/resend topic,
again every `ask_every_s`, at most `max_asks` times; then it is counted lost. A window
that arrives for an open gap closes it (recovered). Counts are in `stats()` (REST,
/healthz, /metrics); the device counts its side (outbox drops, resend_missing).

Tables live in the telemetry database (created if missing): `telemetry_seq` (the highest
sequence seen per device, so a retention purge never reopens old numbers) and
`telemetry_gaps` (one row per missing sequence while open or lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tandem.cloud_hub.telemetry.store import TelemetryStore
from tandem.protocols.resend import MAX_RESEND_SEQUENCES, ResendRequest

log = logging.getLogger(__name__)

CLOCK_STEP_TOLERANCE_S = 5.0  # a stamp further ahead of the clock than this was made before it was stepped back
MAX_GAP_ROWS = 100_000  # sequences one jump may open; a bigger jump (a reset outbox) counts the rest lost at once

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS telemetry_seq (device_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, "
    "lost_unasked INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS telemetry_gaps (device_id TEXT NOT NULL, sequence INTEGER NOT NULL, "
    "opened_at REAL NOT NULL, asks INTEGER NOT NULL DEFAULT 0, last_ask REAL NOT NULL DEFAULT 0, "
    "state TEXT NOT NULL DEFAULT 'open', PRIMARY KEY (device_id, sequence)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS telemetry_gaps_state ON telemetry_gaps (state, last_ask)",
)

Publish = Callable[[str, bytes], None]  # (device id, resend request payload)


@dataclass(frozen=True)
class GapPolicy:
    ask_after_s: float = 5.0  # a gap younger than this may still fill by itself
    ask_every_s: float = 30.0  # between two asks for the same gap
    max_asks: int = 3  # then the gap is counted lost


class GapTracker:
    """Thread-safe; `note` runs on the ingest writer after each commit, `tick` on a timer."""

    def __init__(
        self,
        store: TelemetryStore,
        publish: Publish,
        policy: GapPolicy = GapPolicy(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.publish, self.policy, self.clock = store, publish, policy, clock
        self._lock = threading.Lock()
        self.asked = 0  # resend requests published
        self.recovered = 0  # gaps a later window filled (since start)
        store.db.ensure_schema(_SCHEMA)
        with store.db.transaction() as tx:
            # a hub upgraded with windows already stored: start from what it has ("WHERE true": SQLite's
            # INSERT ... SELECT ... ON CONFLICT needs a WHERE to parse)
            tx.execute(
                "INSERT INTO telemetry_seq (device_id, last_seq) SELECT device_id, "
                "MAX(sequence) FROM telemetry_windows WHERE true GROUP BY device_id ON CONFLICT DO NOTHING"
            )
        self._last = {r["device_id"]: int(r["last_seq"]) for r in store.db.query("SELECT * FROM telemetry_seq")}

    def note(self, windows: Iterable[tuple[str, int]]) -> None:
        """(device, sequence) of newly stored windows: open gaps for skipped numbers, close filled ones."""
        now = self.clock()
        opened: list[tuple[str, int, float]] = []
        filled: list[tuple[str, int]] = []
        lost_at_once: dict[str, int] = defaultdict(int)
        with self._lock:
            changed: dict[str, int] = {}
            for device, seq in sorted(windows, key=lambda x: (x[0], x[1])):
                last = self._last.get(device, 0)
                if seq > last:
                    first = max(last + 1, seq - MAX_GAP_ROWS)
                    lost_at_once[device] += first - (last + 1)
                    opened += [(device, s, now) for s in range(first, seq)]
                    self._last[device] = changed[device] = seq
                else:
                    filled.append((device, seq))
            with self.store.db.transaction() as c:
                for device, seq in changed.items():
                    c.execute(
                        "INSERT INTO telemetry_seq (device_id, last_seq) VALUES (?, ?) ON CONFLICT(device_id) "
                        "DO UPDATE SET last_seq=excluded.last_seq",
                        [device, seq],
                    )
                for device, n in lost_at_once.items():
                    if n:
                        c.execute("UPDATE telemetry_seq SET lost_unasked=lost_unasked+? WHERE device_id=?", [n, device])
                c.executemany(
                    "INSERT INTO telemetry_gaps (device_id, sequence, opened_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                    opened,
                )
                for device, seq in filled:
                    if c.execute("DELETE FROM telemetry_gaps WHERE device_id=? AND sequence=?", [device, seq]):
                        self.recovered += 1
        if opened:
            log.warning("telemetry gaps opened=%d devices=%s", len(opened), sorted({d for d, _, _ in opened})[:5])

    def tick(self) -> int:
        """Ask for gaps due an ask; count as lost those asked max_asks times; returns requests published."""
        now, p = self.clock(), self.policy
        with self._lock:
            with self.store.db.transaction() as c:
                # stamps from before the wall clock was stepped back would wait for as long as it went back
                # (past the agents' replay_s, a recoverable gap becomes a loss): they start again from now
                ahead = now + CLOCK_STEP_TOLERANCE_S
                c.execute("UPDATE telemetry_gaps SET opened_at=? WHERE state='open' AND opened_at>?", [now, ahead])
                c.execute("UPDATE telemetry_gaps SET last_ask=? WHERE state='open' AND last_ask>?", [now, ahead])
                c.execute(
                    "UPDATE telemetry_gaps SET state='lost' WHERE state='open' AND asks>=? AND last_ask<?",
                    [p.max_asks, now - p.ask_every_s],
                )
                due = c.query(
                    "SELECT device_id, sequence FROM telemetry_gaps WHERE state='open' AND asks<? AND "
                    "((asks=0 AND opened_at<?) OR (asks>0 AND last_ask<?)) ORDER BY device_id, sequence",
                    [p.max_asks, now - p.ask_after_s, now - p.ask_every_s],
                )
                by_device: dict[str, list[int]] = defaultdict(list)
                for device, seq in ((r["device_id"], r["sequence"]) for r in due):
                    if len(by_device[device]) < MAX_RESEND_SEQUENCES:
                        by_device[device].append(int(seq))
                for device, seqs in by_device.items():
                    c.executemany(
                        "UPDATE telemetry_gaps SET asks=asks+1, last_ask=? WHERE device_id=? AND sequence=?",
                        [(now, device, s) for s in seqs],
                    )
        sent = 0
        for device, seqs in by_device.items():
            try:
                self.publish(device, ResendRequest(tuple(seqs), now).encode())
                sent += 1
            except Exception as exc:  # the broker is away: the next tick asks again (asks already counted)
                log.warning("resend request not published device=%s error=%s", device, exc)
        if sent:
            self.asked += sent
            log.warning("telemetry resend requested devices=%d windows=%d", sent, sum(map(len, by_device.values())))
        return sent

    def stats(self) -> dict[str, Any]:
        rows = self.store.db.query("SELECT state, COUNT(*) AS n FROM telemetry_gaps GROUP BY state")
        counts = {r["state"]: int(r["n"]) for r in rows}
        unasked = self.store.db.query("SELECT COALESCE(SUM(lost_unasked), 0) AS n FROM telemetry_seq")[0]["n"]
        return {
            "open": counts.get("open", 0),
            "lost": counts.get("lost", 0) + int(unasked),
            "recovered_since_start": self.recovered,
            "resend_requests": self.asked,
            "policy": {
                "ask_after_s": self.policy.ask_after_s,
                "ask_every_s": self.policy.ask_every_s,
                "max_asks": self.policy.max_asks,
            },
        }

    def device_gaps(self, device_id: str) -> dict[str, Any]:
        """One device: last sequence seen, open and lost sequences (the first 100 of each)."""
        out: dict[str, Any] = {"device_id": device_id, "last_sequence": self._last.get(device_id, 0)}
        for state in ("open", "lost"):
            rows = self.store.db.query(
                "SELECT sequence FROM telemetry_gaps WHERE device_id=? AND state=? ORDER BY sequence LIMIT 100",
                [device_id, state],
            )
            out[state] = [r["sequence"] for r in rows]
        return out
