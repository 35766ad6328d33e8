"""`tandem-hub storage migrate`: move a hub from its SQLite files to PostgreSQL (cloud_hub.storage.migrate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

MIGRATE_EPILOG = """\
what it does:
  1. refuses while a hub (or a replica) runs on the data dir, and keeps the dir locked until done
  2. opens each store found in the data dir (hub.db, telemetry.sqlite, rollouts.sqlite,
     hard_examples.sqlite) on the target as a hub would: same migrations, one schema each
     (hub, telemetry, rollouts, hard_examples)
  3. refuses if any target table already has rows (naming it), unless --replace
  4. copies every table in chunks (COPY), one transaction per store, printing progress
  5. checks each table's row count on both sides; exit 1 if any differs (that store is not kept)

the SQLite files are only read. Artifacts, keys and certificates stay in the data dir:
start the hub with the same data dir and the URL, e.g.
  tandem-hub storage migrate --data-dir ./tandem-data --database-url postgresql://tandem:PW@db:5432/tandem
  tandem-hub check --database-url postgresql://tandem:PW@db:5432/tandem --data-dir ./tandem-data
  tandem-hub serve --data-dir ./tandem-data --database-url postgresql://tandem:PW@db:5432/tandem
"""


def add_storage_commands(sub: Any) -> None:
    group = sub.add_parser(
        "storage", help="move the hub's state between storage backends", description="Hub storage tools."
    )
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    actions = group.add_subparsers(metavar="ACTION")
    p = actions.add_parser(
        "migrate",
        help="copy a hub's SQLite stores into an empty PostgreSQL database",
        description="Copy every store of a stopped hub's data dir (SQLite) into a PostgreSQL database, "
        "then verify row counts table by table.",
        epilog=MIGRATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data-dir", type=Path, help="the hub's data dir (default: the hub config's)")
    p.add_argument("--config", type=Path, help="hub config TOML (for its data_dir)")
    p.add_argument(
        "--database-url",
        required=True,
        help="the target: postgresql://user:password@host:port/dbname (an empty database; the user needs CREATE)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="delete the rows the target's hub tables already hold before copying (default: refuse)",
    )
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per COPY chunk (default 5000)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=cmd_storage_migrate)


def cmd_storage_migrate(args: argparse.Namespace) -> int:
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.storage.db import redact_url
    from tandem.cloud_hub.storage.migrate import DEFAULT_CHUNK_ROWS, migrate_data_dir

    config = HubConfig.load(args.config, overrides={"data_dir": args.data_dir})

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    copied = migrate_data_dir(
        config.data_dir,
        args.database_url,
        replace=args.replace,
        chunk_rows=args.chunk_rows or DEFAULT_CHUNK_ROWS,
        progress=progress,
    )
    rows = sum(t.target_rows for store in copied for t in store.tables)
    tables = sum(len(store.tables) for store in copied)
    print(
        f"migrated {len(copied)} store(s), {tables} tables, {rows} rows from {config.data_dir} to "
        f"{redact_url(args.database_url)}; row counts verified",
        file=sys.stdout,
    )
    print(
        f"next: tandem-hub serve --data-dir {config.data_dir} --database-url {redact_url(args.database_url)} "
        "(with the real password)"
    )
    return 0
