"""The PostgreSQL backend of `HubDatabase` (psycopg 3): one schema per store, a small connection pool.

The hub is multi-threaded (HTTP workers, ingest writer, rollout controller, presence), so each
statement or transaction borrows a connection from a pool of at most `max_connections` and
gives it back; a thread inside `transaction()` keeps its connection, so its `query` reads its
own writes. Connections run in autocommit and `transaction()` opens a real BEGIN/COMMIT.
Every connection's search_path is the store's schema, so the SQL names tables unqualified.

A statement waits at most STATEMENT_TIMEOUT_S (unless the URL, role or database sets statement_timeout):
without it, one session holding a lock on a table the hub writes would hang REST workers and the
ingest writer forever. The database being away (down, restarting, no free connection slot, a
statement timed out) raises `DatabaseUnavailableError` (REST 503); after a restart the idle pool,
whose connections all died with the server, is dropped at the first broken one.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from tandem.cloud_hub.storage.db import DatabaseError, DatabaseUnavailableError, HubDatabase, Params, redact_url
from tandem.cloud_hub.storage.dialect import POSTGRESQL

try:
    import psycopg
    from psycopg import sql as pgsql
    from psycopg.adapt import Loader
    from psycopg.rows import dict_row
except ImportError:  # pragma: no cover - the [postgres] extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8
BORROW_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 30.0  # the default bound on one statement, lock waits included

_sql = functools.lru_cache(maxsize=2048)(POSTGRESQL.sql)

if psycopg is not None:

    class _NumericLoader(Loader):
        """numeric -> int or float (SUM over BIGINT is numeric; SQLite answers a plain number)."""

        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            try:
                return int(text)
            except ValueError:
                return float(text)


def _one_line(exc: BaseException) -> str:
    """psycopg's message on one line (libpq's spans several, with tabs)."""
    return " ".join(str(exc).split())


def _no_free_slot(exc: BaseException) -> bool:
    """The server refused for want of a connection slot (SQLSTATE 53300; at connect time psycopg carries only
    libpq's text, English unless the server's lc_messages says otherwise)."""
    return getattr(exc, "sqlstate", None) == "53300" or "too many clients" in str(exc)


def _run(cur: Any, sql: str, params: Params) -> None:
    if params:
        cur.execute(_sql(sql), params)
    else:  # without parameters psycopg sends the text as it is (no %s, no %% to undo)
        cur.execute(sql)


class _PgTransaction:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> int:
        with self.conn.cursor() as cur:
            _run(cur, sql, params)
            return int(cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Params]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        with self.conn.cursor() as cur:
            cur.executemany(_sql(sql), rows)
            return int(cur.rowcount)

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            _run(cur, sql, params)
            return cur.fetchall() if cur.description is not None else []


class PostgresDatabase(HubDatabase):
    """A store in one schema of a PostgreSQL database."""

    dialect = POSTGRESQL

    def __init__(self, url: str, schema: str, max_connections: int = MAX_CONNECTIONS, durable: bool = False) -> None:
        self.url = url
        self.schema = schema
        self.durable = durable
        self.where = f"{redact_url(url)} (schema {schema})"
        if psycopg is None:
            raise DatabaseError(
                f"{self.where}: PostgreSQL needs psycopg; install it with `pip install 'tandem[postgres]'`"
            )
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._made = 0
        self._max = max_connections
        self._guard = threading.Lock()
        self._local = threading.local()
        self._all: list[Any] = []
        self._closed = False
        self.statement_timeout = f"{STATEMENT_TIMEOUT_S:g}s"
        conn = self._connect(create_schema=True)
        self._idle.put(conn)

    # -- connections ---------------------------------------------------------------------

    def _connect(self, create_schema: bool = False) -> Any:
        try:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            if not _no_free_slot(exc):
                raise DatabaseUnavailableError(
                    f"{self.where}: cannot connect to PostgreSQL ({_one_line(exc)}); check that the server runs and "
                    "that storage.database_url (env TANDEM_HUB_STORAGE_DATABASE_URL, or --database-url) names its "
                    "host, port, user, password and database"
                ) from None
            raise DatabaseUnavailableError(
                f"{self.where}: PostgreSQL has no free connection slot ({_one_line(exc)}); each hub replica opens up "
                f"to {self._max} connections per store: raise the server's max_connections or close other clients"
            ) from None
        conn.adapters.register_loader("numeric", _NumericLoader)
        try:
            if create_schema:
                with conn.transaction():  # two replicas starting at once: one creates, the other waits
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["tandem-schema:" + self.schema])
                    conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema)))
            conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))
            commit = conn.execute("SHOW synchronous_commit").fetchone()
            if self.durable and commit and commit["synchronous_commit"] == "off":
                # A store that acknowledges what it committed (telemetry: acks to the broker) must not lose a
                # commit to a server crash, whatever the server's default (SQLite's durable=True: synchronous=FULL).
                conn.execute("SET synchronous_commit = on")
            row = conn.execute("SHOW statement_timeout").fetchone()
            if row and row["statement_timeout"] == "0":  # unbounded: the server's default, not a chosen value
                conn.execute(f"SET statement_timeout = {int(STATEMENT_TIMEOUT_S * 1000)}")
                row = {"statement_timeout": f"{STATEMENT_TIMEOUT_S:g}s"}
            self.statement_timeout = row["statement_timeout"] if row else "?"
        except psycopg.OperationalError as exc:
            conn.close()
            raise DatabaseUnavailableError(
                f"{self.where}: lost the connection to PostgreSQL ({_one_line(exc)})"
            ) from None
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(
                f"{self.where}: cannot use schema {self.schema} ({str(exc).strip()}); the user needs CREATE on the "
                "database (GRANT CREATE ON DATABASE ... TO ...)"
            ) from None
        with self._guard:
            self._made += 1
            self._all.append(conn)
        return conn

    def _borrow(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._guard:
            may_make = self._made < self._max
            if may_make:
                self._made += 1  # reserved; _connect counts again, so give the reservation back
        if may_make:
            try:
                return self._connect()
            finally:
                with self._guard:
                    self._made -= 1
        try:
            return self._idle.get(timeout=BORROW_TIMEOUT_S)
        except queue.Empty:
            raise DatabaseUnavailableError(
                f"{self.where}: all {self._max} connections stayed busy for {BORROW_TIMEOUT_S:.0f} s"
            ) from None

    def _give_back(self, conn: Any) -> None:
        if conn.broken:  # the server went away: the idle ones died with it, so drop them now, not one per call
            self._drop_idle()
        if conn.closed or conn.broken or self._closed:
            with self._guard:
                self._made -= 1
                if conn in self._all:
                    self._all.remove(conn)
            if not conn.closed:
                conn.close()
            return
        self._idle.put(conn)

    def _drop_idle(self) -> None:
        while True:
            try:
                idle = self._idle.get_nowait()
            except queue.Empty:
                return
            with self._guard:
                self._made -= 1
                if idle in self._all:
                    self._all.remove(idle)
            try:
                idle.close()
            except Exception as exc:  # closing a dead connection is best effort
                log.debug("closing a dead connection failed where=%s error=%s", self.where, exc)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # inside this thread's transaction
            yield conn
            return
        if self._closed:
            raise DatabaseError(f"{self.where}: the database is closed")
        conn = self._borrow()
        try:
            yield conn
        except psycopg.errors.QueryCanceled as exc:
            raise DatabaseUnavailableError(
                f"{self.where}: a statement ran past statement_timeout ({self.statement_timeout}): another session "
                "may hold a lock on a table the hub writes (see pg_locks and pg_stat_activity), or the server is "
                f"overloaded ({_one_line(exc)})"
            ) from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(
                f"{self.where}: lost the connection to PostgreSQL ({_one_line(exc)})"
            ) from exc
        finally:
            self._give_back(conn)

    # -- HubDatabase -----------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[_PgTransaction]:
        """BEGIN ... COMMIT on one connection (a savepoint when nested), rolled back on error."""
        outer = getattr(self._local, "conn", None) is None
        with self._connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield _PgTransaction(conn)
            finally:
                if outer:
                    self._local.conn = None

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return _PgTransaction(conn).query(sql, params)

    def tables(self) -> list[str]:
        rows = self.query(
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema=? ORDER BY table_name",
            [self.schema],
        )
        return [r["name"] for r in rows]

    def _lock_migrations(self, tx: Any) -> None:
        # Migrations may rewrite big tables, and a replica waits here while another migrates: no timeout.
        tx.execute("SET LOCAL statement_timeout = 0")
        tx.query("SELECT pg_advisory_xact_lock(hashtext(?)) AS locked", ["tandem-migrate:" + self.schema])

    def close(self) -> None:
        self._closed = True
        with self._guard:
            conns, self._all = list(self._all), []
        for conn in conns:
            try:
                conn.close()
            except Exception as exc:  # closing is best effort; the server drops it anyway
                log.debug("closing a connection failed where=%s error=%s", self.where, exc)
