"""Copy a hub's SQLite stores (its data dir) into an empty PostgreSQL database: `tandem-hub storage migrate`.

The way out of one machine (docs/storage.md): each store is opened on the target the way a hub opens it
(so the same migrations run first, into the same schemas), tables the hub creates at run time are
created from the SQLite file's own DDL through the dialect (as `ensure_schema` does), then every table
is copied in chunks with COPY and its row count checked on both sides. The data dir stays locked for
the whole copy (a running hub refuses the copy, and no hub starts meanwhile); the SQLite files are
only read. Artifacts, keys and certificates stay files in the data dir: the hub on PostgreSQL keeps
using that data dir for them.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tandem.cloud_hub.errors import HubError
from tandem.cloud_hub.storage.datadir import DataDirLock, DataDirLockedError
from tandem.cloud_hub.storage.db import HubDatabase, Migration, is_postgres_url, redact_url

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNK_ROWS", "MigrateError", "StoreCopy", "TableCopy", "migrate_data_dir"]

DEFAULT_CHUNK_ROWS = 5000
MIGRATIONS_TABLE = "schema_migrations"  # written by the target's own migrations, never copied
_CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+(?!IF\s+NOT\s+EXISTS)", re.I)
_CREATE_INDEX = re.compile(r"^\s*CREATE\s+(UNIQUE\s+)?INDEX\s+(?!IF\s+NOT\s+EXISTS)", re.I)

Progress = Callable[[str], None]


class MigrateError(HubError):
    """The copy cannot start or did not verify; the message names the store and table."""

    status = 409


@dataclass(frozen=True)
class StoreSpec:
    """One hub store: its SQLite file in the data dir, its PostgreSQL schema, how a hub opens it."""

    filename: str
    schema: str
    open: Callable[[str], HubDatabase]
    version: int  # the newest migration this Tandem has for the store


@dataclass
class TableCopy:
    table: str
    source_rows: int
    copied: int = 0
    target_rows: int = 0

    @property
    def ok(self) -> bool:
        return self.source_rows == self.copied == self.target_rows


@dataclass
class StoreCopy:
    filename: str
    schema: str
    version: int
    tables: list[TableCopy] = field(default_factory=list)


def store_specs() -> list[StoreSpec]:
    """The hub's four stores, opened by the classes that own them (imported here: they import this package)."""
    from tandem.cloud_hub import hard_examples
    from tandem.cloud_hub.rollouts import store as rollouts
    from tandem.cloud_hub.storage import db
    from tandem.cloud_hub.telemetry import store as telemetry

    def newest(migrations: Sequence[Migration]) -> int:
        return max(m.version for m in migrations)

    return [
        StoreSpec("hub.db", "hub", lambda url: db.open_database(url), newest(db.MIGRATIONS)),
        StoreSpec(
            telemetry.TELEMETRY_DB_FILENAME,
            telemetry.TELEMETRY_SCHEMA,
            lambda url: telemetry.TelemetryStore.open(url).db,
            newest(telemetry.TELEMETRY_MIGRATIONS),
        ),
        StoreSpec(
            rollouts.ROLLOUTS_DB_FILENAME,
            rollouts.ROLLOUTS_SCHEMA,
            lambda url: rollouts.RolloutStore.open(url).db,
            newest(rollouts.ROLLOUT_MIGRATIONS),
        ),
        StoreSpec(
            hard_examples.HARD_EXAMPLES_DB_FILENAME,
            hard_examples.HARD_EXAMPLES_SCHEMA,
            lambda url: hard_examples.HardExampleStore.open(url).db,
            newest(hard_examples.MIGRATIONS),
        ),
    ]


def migrate_data_dir(
    data_dir: str | Path,
    url: str,
    *,
    replace: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress = lambda line: None,
) -> list[StoreCopy]:
    """Copy every store found in `data_dir` into the PostgreSQL database at `url`; what was copied, verified.

    Refuses (MigrateError) a target table that already has rows, naming it, unless `replace` (its rows
    are deleted first, in the same transaction as the copy); refuses while a hub holds the data dir.
    """
    root = Path(data_dir)
    if not is_postgres_url(url):
        raise MigrateError(f"{redact_url(url)}: the target must be a postgresql://user:password@host:port/db URL")
    if chunk_rows < 1:
        raise MigrateError("chunk_rows: must be a positive integer")
    if not root.is_dir():
        raise MigrateError(f"{root}: no such data dir")
    lock = DataDirLock(root)
    holder = lock.try_acquire()
    if holder is not None:
        raise DataDirLockedError(
            f"{root}: a hub (pid {holder}) is using this data dir; stop it (and every replica) before copying its "
            "stores, or the copy would miss what it writes meanwhile"
        )
    try:
        return _migrate(root, url, replace, chunk_rows, progress)
    finally:
        lock.release()


def _migrate(root: Path, url: str, replace: bool, chunk_rows: int, progress: Progress) -> list[StoreCopy]:
    specs = store_specs()
    known = {s.filename for s in specs}
    for other in sorted([*root.glob("*.db"), *root.glob("*.sqlite")]):
        if other.name not in known:
            progress(f"skipped  {other.name}: not one of the hub's stores")
    found = [(s, root / s.filename) for s in specs if (root / s.filename).is_file()]
    if not found:
        raise MigrateError(f"{root}: no hub store here ({', '.join(sorted(known))}); is it a hub's data dir?")
    opened: list[tuple[StoreSpec, sqlite3.Connection, HubDatabase, StoreCopy]] = []
    try:
        for spec, path in found:  # everything checked before the first row is written
            source = _open_source(path)
            opened.append((spec, source, _open_target(spec, url, source), StoreCopy(spec.filename, spec.schema, 0)))
            _prepare(*opened[-1], replace=replace)
        for spec in specs:  # a store the SQLite hub never opened: its schema is made ready all the same
            if not (root / spec.filename).is_file():
                spec.open(url).close()
                progress(f"created  {spec.schema}: no {spec.filename} in the data dir, an empty schema at its version")
        for spec, source, target, copy in opened:
            _copy_store(spec, source, target, copy, replace, chunk_rows, progress)
        bad = [f"{c.schema}.{t.table}" for _, _, _, c in opened for t in c.tables if not t.ok]
        if bad:
            raise MigrateError(f"row counts differ after the copy in {', '.join(bad)}")
        return [c for _, _, _, c in opened]
    finally:
        for _, source, target, _ in opened:
            source.close()
            target.close()


def _open_source(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise MigrateError(f"{path}: cannot read it ({exc}); run `tandem-hub check` on the data dir") from exc
    return conn


def _open_target(spec: StoreSpec, url: str, source: sqlite3.Connection) -> HubDatabase:
    try:
        return spec.open(url)
    except Exception:
        source.close()
        raise


def _source_version(source: sqlite3.Connection, filename: str) -> int:
    try:
        row = source.execute(f"SELECT MAX(version) FROM {MIGRATIONS_TABLE}").fetchone()
    except sqlite3.Error as exc:
        raise MigrateError(f"{filename}: no {MIGRATIONS_TABLE} table ({exc}); not a hub store") from exc
    return int(row[0] or 0)


def _source_tables(source: sqlite3.Connection) -> dict[str, str]:
    rows = source.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' AND name != ? "
        "ORDER BY name",
        [MIGRATIONS_TABLE],
    ).fetchall()
    return {name: sql for name, sql in rows}


def _prepare(
    spec: StoreSpec, source: sqlite3.Connection, target: HubDatabase, copy: StoreCopy, *, replace: bool
) -> None:
    """Same schema version on both sides, every source table present in the target, target tables empty."""
    copy.version = _source_version(source, spec.filename)
    target_version = target.schema_version()
    if copy.version != target_version:
        raise MigrateError(
            f"{spec.filename}: schema version {copy.version}, but this Tandem's {spec.schema} schema is version "
            f"{target_version}; "
            + (
                "start the hub once on this data dir (it migrates its stores on start), stop it, then copy"
                if copy.version < target_version
                else "use the Tandem version that wrote it"
            )
        )
    tables = _source_tables(source)
    present = set(target.tables())
    missing = [t for t in tables if t not in present]
    if missing:  # created at run time by the hub (ensure_schema): the same DDL, through the dialect
        ddl = [_if_not_exists(_CREATE_TABLE, "CREATE TABLE IF NOT EXISTS ", tables[t]) for t in missing]
        ddl += [
            _if_not_exists(_CREATE_INDEX, "CREATE \\1INDEX IF NOT EXISTS ", sql)
            for (sql,) in source.execute(
                "SELECT sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL AND tbl_name IN "
                f"({', '.join('?' * len(missing))})",
                missing,
            )
        ]
        target.ensure_schema(ddl)
    for table in tables:
        columns = set(_source_columns(source, table))
        lacking = sorted(columns - set(_target_columns(target, spec.schema, table)))
        if lacking:
            raise MigrateError(f"{spec.schema}.{table}: the target has no column {', '.join(lacking)}")
        if not replace and target.query(f'SELECT 1 AS x FROM "{table}" LIMIT 1'):
            raise MigrateError(
                f"{redact_url(_url_of(target))}: table {spec.schema}.{table} already has rows; copy into an empty "
                "database, or pass --replace to delete what the target holds first"
            )
        copy.tables.append(TableCopy(table, int(source.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])))


def _if_not_exists(pattern: re.Pattern[str], replacement: str, sql: str) -> str:
    return pattern.sub(replacement, sql, count=1)


def _url_of(target: HubDatabase) -> str:
    return str(getattr(target, "url", target.where))


def _source_columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in source.execute(f'PRAGMA table_info("{table}")')]


def _target_columns(target: HubDatabase, schema: str, table: str) -> list[str]:
    rows = target.query(
        "SELECT column_name AS c FROM information_schema.columns WHERE table_schema=? AND table_name=?",
        [schema, table],
    )
    return [r["c"] for r in rows]


def _identity_columns(target: HubDatabase, schema: str, table: str) -> list[str]:
    rows = target.query(
        "SELECT column_name AS c FROM information_schema.columns WHERE table_schema=? AND table_name=? "
        "AND is_identity='YES'",
        [schema, table],
    )
    return [r["c"] for r in rows]


def _chunks(source: sqlite3.Connection, table: str, columns: list[str], size: int) -> Iterator[list[Any]]:
    cur = source.execute(f'SELECT {", ".join(_quote(c) for c in columns)} FROM "{table}"')
    while rows := cur.fetchmany(size):
        yield rows


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _copy_store(
    spec: StoreSpec,
    source: sqlite3.Connection,
    target: HubDatabase,
    copy: StoreCopy,
    replace: bool,
    chunk_rows: int,
    progress: Progress,
) -> None:
    """One transaction per store on the target: its tables are all there, or none (and a rerun starts over)."""
    source.execute("BEGIN")  # one read snapshot of the file for every table and count
    try:
        with target.transaction() as tx:
            conn = tx.conn  # type: ignore[attr-defined]  # the PostgreSQL transaction's connection (COPY)
            for item in copy.tables:
                columns = _source_columns(source, item.table)
                if replace:
                    tx.execute(f'DELETE FROM "{item.table}"')
                names = ", ".join(_quote(c) for c in columns)
                for rows in _chunks(source, item.table, columns, chunk_rows):
                    with conn.cursor() as cur:
                        with cur.copy(f'COPY "{item.table}" ({names}) FROM STDIN') as pipe:
                            for row in rows:
                                pipe.write_row(row)
                    item.copied += len(rows)
                    progress(f"copying  {spec.schema}.{item.table}: {item.copied}/{item.source_rows} rows")
                for column in _identity_columns(target, spec.schema, item.table):
                    # the copied ids were given explicitly: the next generated one must follow them
                    tx.query(
                        f"SELECT setval(pg_get_serial_sequence(?, ?), COALESCE(MAX({_quote(column)}), 0) + 1, false) "
                        f'AS v FROM "{item.table}"',
                        [f"{spec.schema}.{item.table}", column],
                    )
                item.target_rows = int(tx.query(f'SELECT COUNT(*) AS n FROM "{item.table}"')[0]["n"])
                state = "ok" if item.ok else "MISMATCH"
                progress(
                    f"{state:<8} {spec.schema}.{item.table}: {item.source_rows} rows, {item.target_rows} in target"
                )
                if not item.ok:
                    raise MigrateError(
                        f"{spec.schema}.{item.table}: {item.source_rows} rows in {spec.filename}, {item.copied} copied, "
                        f"{item.target_rows} in the target; nothing of this store was kept"
                    )
    except MigrateError:
        raise
    except Exception as exc:
        raise MigrateError(
            f"{spec.filename} -> schema {spec.schema}: copy failed ({exc}); nothing of it was kept"
        ) from exc
    finally:
        source.execute("ROLLBACK")
