"""The hub's storage interface (`HubDatabase`), its versioned migrations and `open_database`.

Two backends sit behind it: SQLite (one file per store, the embedded default:
cloud_hub/storage/sqlite_db.py) and PostgreSQL (one database, one schema per store:
cloud_hub/storage/postgres_db.py). Stores write portable SQL with `?` placeholders;
cloud_hub/storage/dialect.py rewrites what differs. Later issues append migrations to a
store's list; applied ones are never edited.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from tandem.cloud_hub.errors import HubError, ServiceUnavailableError
from tandem.cloud_hub.storage.dialect import Dialect

log = logging.getLogger(__name__)


Params = Sequence[Any]
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DatabaseError(HubError):
    """The database cannot be opened, reached or migrated; the message names it (password redacted)."""


class DatabaseUnavailableError(DatabaseError, ServiceUnavailableError):
    """The database cannot answer now (down or restarting, no free connection slot, a statement past its
    timeout): worth retrying, so REST answers 503 (the hub's one 503 type), not 500; loops log it as one
    line, not a traceback."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "models, variants, files, devices, tokens",
        (
            """CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            version_key TEXT NOT NULL,
            content_sha256 TEXT NOT NULL,
            manifest TEXT NOT NULL,
            created_at TEXT NOT NULL,
            registered_at REAL NOT NULL,
            size_bytes INTEGER NOT NULL,
            PRIMARY KEY (name, version))""",
            """CREATE TABLE variants (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            variant_id TEXT NOT NULL,
            runtime TEXT NOT NULL,
            precision TEXT NOT NULL,
            profiles TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            PRIMARY KEY (model, version, variant_id))""",
            """CREATE TABLE model_files (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (model, version, path))""",
            "CREATE INDEX model_files_sha256 ON model_files (sha256)",
            """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            profile TEXT NOT NULL,
            agent_version TEXT NOT NULL,
            tags TEXT NOT NULL,
            model_name TEXT,
            model_version TEXT,
            registered_at REAL NOT NULL,
            last_seen REAL NOT NULL)""",
            """CREATE TABLE tokens (
            token_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            scope TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL,
            last_used_at REAL)""",
        ),
    ),
    # Presence from MQTT: the newest retained status or last will ('online'/'offline', NULL: never said) and its
    # order key (boot, connection, offline), so a late will never overrides a newer online (cloud_hub/presence.py).
    Migration(
        2,
        "device presence from MQTT status and last will",
        (
            "ALTER TABLE devices ADD COLUMN presence TEXT",
            "ALTER TABLE devices ADD COLUMN presence_key TEXT",
        ),
    ),
    # Per-device tokens (scope 'device'): the device a token belongs to, so it reads nothing of other devices
    # and is revoked with the device's certificate (cloud_hub/auth.py).
    Migration(3, "per-device tokens", ("ALTER TABLE tokens ADD COLUMN device_id TEXT",)),
)


class Transaction(Protocol):
    """Statements inside one transaction (`HubDatabase.transaction()`), on one connection."""

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Sequence[Params]) -> int:
        """Run one statement per parameter row; the rows changed in all."""
        ...

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Rows (as dicts) of a SELECT, or of a statement with RETURNING."""
        ...


class HubDatabase(ABC):
    """One store's database: SQLite file or PostgreSQL schema, thread-safe, `?` placeholders.

    `query`/`execute` run alone (autocommit); `transaction()` commits on success and rolls back
    on error. Inside a transaction the same thread's `query` sees its uncommitted writes.
    """

    dialect: Dialect
    where: str  # the file, or the URL (password redacted) and schema: for logs and errors

    @property
    def path(self) -> str:
        """Where the data lives (kept for log lines that said `db.path`)."""
        return self.where

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]: ...

    @abstractmethod
    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]: ...

    def execute(self, sql: str, params: Params = ()) -> int:
        """One statement in its own transaction; the rows it changed."""
        with self.transaction() as tx:
            return tx.execute(sql, params)

    @abstractmethod
    def tables(self) -> list[str]:
        """The tables of this store (integrity checks, tests)."""

    @abstractmethod
    def close(self) -> None: ...

    def _lock_migrations(self, tx: Transaction) -> None:
        """Keep two processes from migrating the same store at once (PostgreSQL: an advisory lock)."""

    def ensure_schema(self, statements: Sequence[str]) -> None:
        """Run idempotent DDL (CREATE ... IF NOT EXISTS, written for SQLite) under the migration lock.

        Why the lock: on PostgreSQL two replicas starting at once race on CREATE TABLE/INDEX IF NOT EXISTS
        (the loser fails with a duplicate key in pg_type or pg_class); the lock makes the second one wait and
        then find the object there."""
        with self.transaction() as tx:
            self._lock_migrations(tx)
            for statement in statements:
                tx.execute(self.dialect.ddl(statement))

    def schema_version(self) -> int:
        rows = self.query("SELECT MAX(version) AS v FROM schema_migrations")
        return int(rows[0]["v"] or 0) if rows else 0


def insert(tx: Transaction, table: str, row: Mapping[str, Any], conflict: str = "") -> int:
    """INSERT one row given as a dict (column names are ours, never user input); `conflict`: e.g.
    "ON CONFLICT DO NOTHING". The rows it changed (0: the conflict clause skipped it)."""
    return tx.execute(_insert_sql(table, tuple(row), conflict), list(row.values()))


def insert_many(tx: Transaction, table: str, rows: Sequence[Mapping[str, Any]], conflict: str = "") -> int:
    """INSERT several dicts with the same keys in one executemany."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    return tx.executemany(_insert_sql(table, columns, conflict), [[r[c] for c in columns] for r in rows])


def upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT ... ON CONFLICT(key) DO UPDATE SET every other column (both engines run it)."""
    updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in key)
    return _insert_sql(table, tuple(columns), f"ON CONFLICT({', '.join(key)}) DO UPDATE SET {updates}")


def _insert_sql(table: str, columns: tuple[str, ...], conflict: str) -> str:
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {conflict}".rstrip()


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    return re.sub(r"^([a-z]+://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_database(
    target: str | Path,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    schema: str = "hub",
    durable: bool = False,
) -> HubDatabase:
    """Open (creating) a store and apply its pending migrations in order.

    `target`: a SQLite file path, or a postgresql:// URL (the store lives in `schema` there, so
    the hub's stores keep apart schema_migrations in one database). `durable`: SQLite fsyncs
    every commit (synchronous=FULL), PostgreSQL waits for its WAL flush (synchronous_commit on where the server
    says off), for stores that acknowledge what they committed.
    """
    if is_postgres_url(target):
        from tandem.cloud_hub.storage.postgres_db import PostgresDatabase

        if not SCHEMA_RE.match(schema):
            raise DatabaseError(f"schema {schema!r}: lowercase letters, digits and '_' only")
        hub_db: HubDatabase = PostgresDatabase(str(target), schema, durable=durable)
    else:
        if isinstance(target, str) and "://" in target:
            raise DatabaseError(
                f"{redact_url(target)}: not a database this hub can use; give a file path (SQLite) or a "
                "postgresql://user:password@host:port/dbname URL (storage.database_url)"
            )
        from tandem.cloud_hub.storage.sqlite_db import SqliteDatabase

        hub_db = SqliteDatabase(Path(target), durable=durable)
    try:
        _migrate(hub_db, migrations)
    except BaseException:
        hub_db.close()
        raise
    return hub_db


def _migrate(hub_db: HubDatabase, migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise DatabaseError("migrations must have unique, increasing versions")
    dialect = hub_db.dialect
    with hub_db.transaction() as tx:
        hub_db._lock_migrations(tx)
        tx.execute(
            dialect.ddl(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
        )
    current = hub_db.schema_version()
    known = max(versions, default=0)
    if current > known:
        raise DatabaseError(
            f"{hub_db.where}: schema version {current} is newer than this Tandem knows ({known}); upgrade tandem"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        try:
            with hub_db.transaction() as tx:
                hub_db._lock_migrations(tx)  # another replica may have applied it meanwhile
                if tx.query("SELECT 1 AS x FROM schema_migrations WHERE version=?", [migration.version]):
                    continue
                for statement in migration.statements:
                    tx.execute(dialect.ddl(statement))
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    [migration.version, migration.name, time.time()],
                )
        except DatabaseError:
            raise
        except Exception as exc:
            raise DatabaseError(
                f"{hub_db.where}: migration {migration.version} ({migration.name}) failed: {exc}"
            ) from exc
        log.info("applied migration where=%s version=%d name=%s", hub_db.where, migration.version, migration.name)
