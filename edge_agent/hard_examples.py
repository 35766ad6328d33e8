"""A bounded on-disk queue of hard examples (inputs the edge model was unsure about).

SQLite in WAL mode; when full the oldest rows go and a counter says how many. Writes
happen on one writer thread fed by a bounded in-memory queue, so serving never
waits on the disk; if even that queue is full the example is dropped and counted.
Tensors are stored as raw bytes behind a JSON index (no pickle). Uploads go through the
telemetry outbox as its class 1 (TelemetryService moves batches in while that class has
room), so they share its budget, priorities and delete-on-ack; this queue is the cheap
capture buffer in front of it.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from tandem.edge_agent.errors import DataFileError, is_damaged_database
from tandem.protocols.telemetry_codec import TelemetryDecodeError, encode_hard_example

# the blob format lives in protocols (the hub decodes it); re-exported for callers of this module
from tandem.protocols.tensor_blob import decode_tensors, encode_tensors

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hard_examples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    label INTEGER,
    confidence REAL,
    source TEXT NOT NULL,
    tensors BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_STOP = object()


@dataclass(frozen=True)
class HardExample:
    id: int
    created_at: float
    request_id: str
    model: str
    version: str
    label: int | None
    confidence: float | None
    source: str
    inputs: dict[str, np.ndarray]


class HardExampleQueue:
    """Bounded FIFO of low-confidence inputs in `path` (SQLite); thread-safe `put`."""

    def __init__(self, path: str | Path, max_rows: int = 1000, *, pending_max: int = 256) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if not is_damaged_database(exc):
                raise
            raise DataFileError(  # damaged, truncated, not SQLite: say which file and the way out
                f"{self.path}: the hard-example queue cannot be opened ({exc}); it holds only examples not yet "
                "uploaded: move it aside (keep it to recover them with `sqlite3 FILE .recover`) and start the "
                "agent again, which creates an empty one"
            ) from exc
        self._lock = threading.Lock()
        self._pending: queue.Queue = queue.Queue(maxsize=pending_max)
        self._not_queued = 0
        self.write_failed = 0  # examples lost because the file could not be written
        self.write_error: str | None = None  # why it cannot be written now (None: it can)
        self._rows: int | None = None  # cached row count; None: count on the next write
        self._thread = threading.Thread(target=self._writer, name="hard-examples", daemon=True)
        self._thread.start()

    # -- producer ---------------------------------------------------------------

    def put(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        request_id: str,
        model: str,
        version: str,
        label: int | None,
        confidence: float | None,
        source: str,
    ) -> bool:
        """Queue one example for writing; False (and counted) when the writer is too far behind."""
        # copy now: the arrays may be views over a network frame that is reused after the reply
        row = (
            time.time(),
            request_id,
            model,
            version,
            label,
            confidence,
            source,
            {k: np.array(v) for k, v in inputs.items()},
        )
        try:
            self._pending.put_nowait(row)
            return True
        except queue.Full:
            with self._lock:
                self._not_queued += 1
            return False

    # -- reader side (upload later) ---------------------------------------------------

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM hard_examples").fetchone()[0])

    def dropped(self) -> int:
        """Examples lost: evicted as oldest when full, not queued because the writer lagged, or not written
        because the file could not be (disk full, read-only)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
            return (row[0] if row else 0) + self._not_queued + self.write_failed

    @property
    def degraded(self) -> str | None:
        """Why hard examples are not being stored now (None: they are)."""
        return f"hard examples unwritable: {self.write_error}" if self.write_error else None

    def peek(self, limit: int = 100) -> list[HardExample]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, created_at, request_id, model, version, label, confidence, source, tensors "
                "FROM hard_examples ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [HardExample(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], decode_tensors(r[8])) for r in rows]

    def peek_uploads(self, device_id: str, limit: int = 32) -> list[tuple[int, bytes]]:
        """The oldest examples as upload payloads (protocols.telemetry_codec.encode_hard_example), oldest first.

        Built from the stored bytes without decoding the tensors; an example too big for one
        MQTT message can never be sent, so it is deleted here and counted as dropped.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, created_at, request_id, model, version, label, confidence, source, tensors "
                "FROM hard_examples ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        out, too_big = [], []
        for r in rows:
            header = {
                "device_id": device_id,
                "id": r[0],
                "created_at": r[1],
                "request_id": r[2],
                "model": r[3],
                "version": r[4],
                "label": r[5],
                "confidence": r[6],
                "source": r[7],
            }
            try:
                out.append((r[0], encode_hard_example(header, r[8])))
            except TelemetryDecodeError as exc:
                log.warning("hard example too big to upload id=%d error=%s", r[0], exc)
                too_big.append(r[0])
        if too_big:
            self.ack(too_big)
            with self._lock:
                self._not_queued += len(too_big)
        return out

    def ack(self, ids: list[int]) -> None:
        """Delete uploaded examples."""
        with self._lock:
            self._db.executemany("DELETE FROM hard_examples WHERE id = ?", [(i,) for i in ids])
            self._rows = None

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued example is on disk."""
        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self._pending.put(_STOP)
        self._thread.join(10)
        with self._lock:
            self._db.close()

    # -- writer thread ---------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            item = self._pending.get()
            try:
                if item is _STOP:
                    return
                self._write(item)
            except sqlite3.Error as exc:
                with self._lock:
                    self.write_failed += 1
                if self.write_error is None:  # logged once per state change
                    log.error(
                        "hard examples unwritable path=%s error=%s; each one is counted (write_failed)", self.path, exc
                    )
                self.write_error = str(exc)
            else:
                if self.write_error is not None and item is not _STOP:
                    log.warning("hard examples writable again path=%s lost=%d", self.path, self.write_failed)
                    self.write_error = None
            finally:
                self._pending.task_done()

    def _write(self, item: tuple) -> None:
        *meta, inputs = item
        blob = encode_tensors(inputs)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO hard_examples (created_at, request_id, model, version, label, confidence, source, "
                    "tensors) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*meta, blob),
                )
                if self._rows is None:
                    self._rows = int(self._db.execute("SELECT COUNT(*) FROM hard_examples").fetchone()[0])
                else:
                    self._rows += 1
                excess = self._rows - self.max_rows
                if excess > 0:
                    self._db.execute(
                        "DELETE FROM hard_examples WHERE id IN (SELECT id FROM hard_examples ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (excess,),
                    )
                    self._rows -= excess
                self._db.execute("COMMIT")
            except Exception:
                if self._db.in_transaction:  # a failed COMMIT (disk full) has already rolled back
                    self._db.execute("ROLLBACK")
                self._rows = None  # recount next time
                raise
