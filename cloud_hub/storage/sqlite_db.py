"""The SQLite backend of `HubDatabase`: one file per store, WAL, one connection behind a lock.

One connection is shared by the hub's threads: its write rate is small (registrations,
heartbeats, batched telemetry) and SQLite serialises writers anyway. The lock is
re-entrant, so a `query` inside a `transaction` on the same thread reads its own writes.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from tandem.cloud_hub.storage.db import DatabaseError, HubDatabase, Params
from tandem.cloud_hub.storage.dialect import SQLITE


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: value for d, value in zip(cursor.description, row)}


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> int:
        return self._conn.executemany(sql, rows).rowcount

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        return self._conn.execute(sql, params).fetchall()


class SqliteDatabase(HubDatabase):
    """A store in one SQLite file (WAL; `durable`: synchronous=FULL, else NORMAL)."""

    dialect = SQLITE

    def __init__(self, path: Path, durable: bool = False) -> None:
        self.file = path
        self.where = str(path)
        self.lock = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (see `transaction`).
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
            conn.row_factory = _dict_row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise DatabaseError(f"{path}: cannot open the database ({exc}); check the file and its folder") from exc
        self.conn = conn
        self._tx = _SqliteTransaction(conn)

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTransaction]:
        """Hold the lock and commit on success, roll back on error."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._tx
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def tables(self) -> list[str]:
        rows = self.query(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
        return [r["name"] for r in rows]

    def close(self) -> None:
        with self.lock:
            self.conn.close()
