"""`tandem-hub check`: integrity of every database in a data dir, and the stored manifests' signatures.

Corrupt storage must give one line naming the file and the table, not a 500 on every
request or a raw traceback. `check_databases` runs SQLite's integrity check on each
*.sqlite file and then reads every table through, so a bad page is named by the table
it belongs to (integrity_check names b-tree pages; a full scan fails inside the table).
`check_manifests` re-verifies each registered manifest's signature with the hub's
release key (protocols.signing, as agents do). The hub runs the quick form at start and
refuses to serve on a corrupt database (`StorageCorruptError`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tandem.cloud_hub.errors import HubError


class StorageCorruptError(HubError):
    """A database in the data dir is damaged; the message names the file and the table."""

    status = 500


@dataclass(frozen=True)
class Problem:
    file: str
    table: str | None
    detail: str

    def line(self) -> str:
        where = f"{self.file} table {self.table}" if self.table else self.file
        return f"{where}: {self.detail}"


def databases(data_dir: str | Path) -> list[Path]:
    """The hub's registry (hub.db) and every component database (*.sqlite) directly in the data dir."""
    root = Path(data_dir)
    return sorted(p for p in [*root.glob("*.db"), *root.glob("*.sqlite")] if p.is_file())


def check_database(path: Path, quick: bool = False) -> list[Problem]:
    """Problems in one SQLite file (empty: healthy). Opens read-only; never writes."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return [Problem(path.name, None, f"cannot open ({exc})")]
    problems: list[Problem] = []
    try:
        try:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
        except sqlite3.Error as exc:
            return [Problem(path.name, "sqlite_master", f"schema unreadable ({exc})")]
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check")]
        except sqlite3.Error as exc:
            rows = [str(exc)]
        if not quick or rows != ["ok"]:  # quick (hub start): read the tables through only to name a bad one
            for table in tables:
                try:
                    for _ in conn.execute(f'SELECT * FROM "{table}"'):
                        pass
                except sqlite3.Error as exc:
                    problems.append(Problem(path.name, table, f"unreadable ({exc})"))
        if rows != ["ok"] and not problems:
            problems.append(Problem(path.name, _table_named(rows, tables), "; ".join(rows[:3])[:300]))
    finally:
        conn.close()
    return problems


def _table_named(rows: list[str], tables: list[str]) -> str | None:
    text = " ".join(rows)
    for table in sorted(tables, key=len, reverse=True):
        if table in text:
            return table
    return None


def check_databases(data_dir: str | Path, quick: bool = False) -> list[Problem]:
    return [p for path in databases(data_dir) for p in check_database(path, quick)]


def check_manifests(db_path: Path, release_key: Any) -> tuple[int, list[Problem]]:
    """(manifests verified, problems): each stored manifest's signature against the hub's release key."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT name, version, manifest FROM models ORDER BY name, version").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        return 0, [Problem(db_path.name, "models", f"unreadable ({exc})")]
    conn.close()
    return verify_manifests(rows, release_key, db_path.name)


def verify_manifests(rows: Iterable[Sequence[Any]], release_key: Any, where: str) -> tuple[int, list[Problem]]:
    """(checked, problems) for (name, version, manifest JSON) rows read from either backend."""
    from tandem.protocols.signing import SignatureError, verify_manifest

    public = release_key.private_key.public_key()
    checked, problems = 0, []
    for name, version, text in rows:
        checked += 1
        try:
            verify_manifest(json.loads(text), public)
        except (SignatureError, ValueError, TypeError, KeyError) as exc:
            problems.append(Problem(where, "models", f"{name} {version}: signature does not verify ({exc})"))
    return checked, problems


def refuse_if_corrupt(data_dir: str | Path) -> None:
    """At hub start: the quick form over every database; one line naming file and table, then stop."""
    problems = check_databases(data_dir, quick=True)
    if problems:
        raise StorageCorruptError(
            f"{Path(data_dir)}: corrupt database: {problems[0].line()}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + "; run `tandem-hub check --data-dir ...` and restore that file from a backup"
        )
