"""The telemetry outbox: windows wait on disk (SQLite, WAL) until the broker acknowledges them.

Append happens before send and assigns the window's sequence in the same transaction
that persists the counter, so a crash can neither lose a window nor reuse a number.
synchronous=FULL: at one window per 10 s the fsync per commit costs nothing, and with
NORMAL a power cut could roll back a committed append after it was already sent,
and the next window would then reuse that sequence (the hub would drop it as a duplicate).

When full (max_rows), the oldest windows are dropped to make room: the newest data
matters most for drift and health, and the cumulative count of dropped windows rides
on every later window (outbox_dropped_total) so the hub can tell a drop from a loss.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from edge_agent.errors import AgentError
from protocols.telemetry_codec import TelemetryWindow, encode_window

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 8640  # one day of 10 s windows


class OutboxError(AgentError):
    """The outbox database cannot be opened or written (disk full, permissions, corrupt file)."""

    code = "telemetry_outbox"


class Outbox:
    """Sequence-numbered windows on disk; thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if max_rows < 1:
            raise OutboxError(f"max_rows: must be >= 1, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, "
                               "created_at REAL NOT NULL)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('last_sequence', 0), ('dropped_total', 0)")
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot open the telemetry outbox ({exc})") from exc

    def append(self, window: TelemetryWindow) -> int:
        """Number the window, store it, and return its sequence (drops the oldest when full)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    seq = self._meta("last_sequence") + 1
                    dropped = self._meta("dropped_total")
                    (rows,) = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
                    excess = rows + 1 - self.max_rows
                    if excess > 0:
                        self._conn.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                                           [excess])
                        dropped += excess
                        log.warning("telemetry outbox full max_rows=%d dropped_oldest=%d dropped_total=%d",
                                    self.max_rows, excess, dropped)
                    window.sequence = seq
                    window.outbox_dropped_total = dropped
                    self._conn.execute("INSERT INTO outbox VALUES (?, ?, ?)", [seq, encode_window(window), time.time()])
                    self._conn.execute("UPDATE meta SET value=? WHERE key='last_sequence'", [seq])
                    self._conn.execute("UPDATE meta SET value=? WHERE key='dropped_total'", [dropped])
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: cannot append a telemetry window ({exc})") from exc
        return seq

    def pending(self, after: int = 0, limit: int = 100) -> list[tuple[int, bytes]]:
        """Unacknowledged windows with sequence > after, oldest first."""
        with self._lock:
            return list(self._conn.execute("SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                                           [after, limit]))

    def ack(self, seq: int) -> None:
        """The broker has the window: forget it (a no-op if it was already dropped or acked)."""
        with self._lock:
            try:
                self._conn.execute("DELETE FROM outbox WHERE seq=?", [seq])
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: cannot delete acknowledged window {seq} ({exc})") from exc

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def last_sequence(self) -> int:
        with self._lock:
            return self._meta("last_sequence")

    @property
    def dropped_total(self) -> int:
        with self._lock:
            return self._meta("dropped_total")

    def _meta(self, key: str) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key=?", [key]).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
