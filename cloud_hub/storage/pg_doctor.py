"""`tandem-hub check --database-url postgresql://...`: what the SQLite check does, for a hub on PostgreSQL.

Read-only, safe beside running replicas: connect; per store schema (hub, telemetry, rollouts,
hard_examples) its migration version against this Tandem's; every table read through with COPY ... TO
(a damaged heap or TOAST page fails inside the table, which is then named); no index left invalid
(a failed CREATE INDEX CONCURRENTLY, a crash mid-REINDEX); and the stored manifests' signatures, as
on SQLite. Each problem is one line naming schema and table; the password never appears (***).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.cloud_hub.storage.db import redact_url
from tandem.cloud_hub.storage.doctor import Problem, verify_manifests
from tandem.cloud_hub.storage.migrate import MIGRATIONS_TABLE, store_specs

CONNECT_TIMEOUT_S = 10


@dataclass
class PostgresReport:
    """Per schema: 'ok', 'missing' (a problem for `hub` only), 'corrupt' or 'outdated'; problems; manifests."""

    where: str
    schemas: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    manifests_verified: int | None = None


def check_postgres(url: str, release_key: Any = None) -> PostgresReport:
    """Check every hub store in the PostgreSQL database at `url` (read-only)."""
    import psycopg

    report = PostgresReport(redact_url(url))
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        report.problems.append(Problem(report.where, None, f"cannot connect ({_redacted(exc, url)})"))
        return report
    try:
        conn.read_only = True  # every statement of this check runs in read-only transactions
        for spec in store_specs():
            state = _check_schema(conn, spec.schema, spec.version, report)
            report.schemas[spec.schema] = state
        if release_key is not None and report.schemas.get("hub") not in (None, "missing"):
            try:
                rows = conn.execute("SELECT name, version, manifest FROM hub.models ORDER BY name, version").fetchall()
            except psycopg.Error as exc:
                report.problems.append(Problem("hub", "models", f"unreadable ({_redacted(exc, url)})"))
            else:
                checked, found = verify_manifests(rows, release_key, "hub")
                report.manifests_verified = checked - len(found)
                report.problems += found
    finally:
        conn.close()
    return report


def _check_schema(conn: Any, schema: str, known: int, report: PostgresReport) -> str:
    import psycopg
    from psycopg import sql

    tables = [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=%s AND table_type='BASE TABLE' "
            "ORDER BY table_name",
            [schema],
        )
    ]
    if not tables:  # the registry is made by every hub; other stores when a hub first uses them
        if schema == "hub":
            report.problems.append(
                Problem(schema, None, "schema missing: no hub has run on this database (or it is another one)")
            )
        return "missing"
    state = "ok"
    if MIGRATIONS_TABLE not in tables:
        report.problems.append(Problem(schema, MIGRATIONS_TABLE, "missing: not migrated by a Tandem hub"))
        state = "corrupt"
    else:
        version = conn.execute(
            sql.SQL("SELECT COALESCE(MAX(version), 0) FROM {}").format(sql.Identifier(schema, MIGRATIONS_TABLE))
        ).fetchone()[0]
        report.versions[schema] = int(version)
        if version != known:
            newer = version > known
            report.problems.append(
                Problem(
                    schema,
                    MIGRATIONS_TABLE,
                    f"schema version {version}, this Tandem's is {known}: "
                    + ("upgrade tandem" if newer else "start a hub of this version on it to migrate"),
                )
            )
            state = "outdated"
    for table in tables:
        try:
            with conn.cursor() as cur:
                statement = sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(schema, table))
                with cur.copy(statement) as copy:
                    for _ in copy:  # read through and drop: a bad page fails here, inside this table
                        pass
        except psycopg.Error as exc:
            report.problems.append(Problem(schema, table, f"unreadable ({str(exc).strip()})"))
            state = "corrupt"
    invalid = conn.execute(
        "SELECT c.relname, t.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = %s AND NOT (i.indisvalid AND i.indisready) ORDER BY 1",
        [schema],
    ).fetchall()
    for index, table in invalid:
        report.problems.append(Problem(schema, table, f"index {index} is invalid (REINDEX INDEX {schema}.{index})"))
        state = "corrupt"
    return state


def _redacted(exc: Exception, url: str) -> str:
    """psycopg's message with the URL's password (if it repeats it) replaced."""
    text = str(exc).strip()
    password = _password(url)
    return text.replace(password, "***") if password else text


def _password(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""
