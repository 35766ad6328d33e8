"""The hub's SQLite database (sqlite-utils, WAL) and its versioned migrations.

One connection is shared by the HTTP worker threads behind a lock: the hub's write
rate is small (registrations, heartbeats) and SQLite serialises writers anyway.
Later issues append migrations to `MIGRATIONS`; applied ones are never edited.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import sqlite_utils

from tandem.cloud_hub.errors import HubError

log = logging.getLogger(__name__)


class DatabaseError(HubError):
    """The database file cannot be opened or migrated."""


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


class HubDatabase:
    """A migrated sqlite-utils Database plus the lock every access takes."""

    def __init__(self, path: Path, db: sqlite_utils.Database) -> None:
        self.path = path
        self.db = db
        self.lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """Hold the lock and commit on success, roll back on error."""
        with self.lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.db.query(sql, params))

    def schema_version(self) -> int:
        with self.lock:
            row = self.db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()


def open_database(path: str | Path, migrations: Sequence[Migration] = MIGRATIONS) -> HubDatabase:
    """Open (creating) the database in WAL mode and apply pending migrations in order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see `transaction`).
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        raise DatabaseError(f"{path}: cannot open the hub database ({exc})") from exc
    hub_db = HubDatabase(path, sqlite_utils.Database(conn))
    _migrate(hub_db, migrations)
    return hub_db


def _migrate(hub_db: HubDatabase, migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise DatabaseError("migrations must have unique, increasing versions")
    with hub_db.transaction() as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
    current = hub_db.schema_version()
    known = max(versions, default=0)
    if current > known:
        raise DatabaseError(
            f"{hub_db.path}: schema version {current} is newer than this Tandem knows ({known}); upgrade tandem"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        try:
            with hub_db.transaction() as db:
                for statement in migration.statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    [migration.version, migration.name, time.time()],
                )
        except sqlite3.Error as exc:
            raise DatabaseError(
                f"{hub_db.path}: migration {migration.version} ({migration.name}) failed: {exc}"
            ) from exc
        log.info("applied migration version=%d name=%s", migration.version, migration.name)
