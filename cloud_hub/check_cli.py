"""`tandem-hub check`: run offline integrity checks on a hub data dir (cloud_hub.storage.doctor)."""

from __future__ import annotations

import argparse
import textwrap
import json
from pathlib import Path
from typing import Any


def add_check_command(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="check every database in a data dir and re-verify stored manifest signatures",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the examples' lines; the text is wrapped here
        description=textwrap.fill(
            "Integrity check and a full read of every table of every *.sqlite in the data dir, "
            "then each registered manifest's signature against the hub's release key. With a PostgreSQL "
            "database (--database-url, or the config's storage.database_url): each store's schema and "
            "migration version, a full read of every table, no invalid index, and the manifests stored there. "
            "One line per problem naming file (or schema) and table; exit 1 if any. Safe beside a running "
            "hub (read-only).",
            79,
        ),
        epilog="examples:\n  tandem-hub check --data-dir ./tandem-data\n"
        "  tandem-hub check --database-url postgresql://tandem:PW@db:5432/tandem --json",
    )
    p.add_argument("--data-dir", type=Path, help="the hub's data dir (default: the hub config's)")
    p.add_argument("--config", type=Path, help="hub config TOML (for its data_dir and storage.database_url)")
    p.add_argument(
        "--database-url",
        help="check this PostgreSQL database (postgresql://user:password@host:port/db) instead of the "
        "data dir's SQLite files (default: the config's storage.database_url)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.errors import HubError
    from tandem.cloud_hub.storage.doctor import check_database, check_manifests, databases

    config = HubConfig.load(
        args.config, overrides={"data_dir": args.data_dir, "storage.database_url": args.database_url}
    )
    url = config.storage.database_url
    if url is not None:
        return _report(_check_postgres(url, config), args.json)
    if not config.data_dir.is_dir():
        raise HubError(f"{config.data_dir}: no such data dir")
    report: dict[str, Any] = {"data_dir": str(config.data_dir), "databases": {}, "problems": []}
    for path in databases(config.data_dir):
        found = check_database(path)
        report["databases"][path.name] = "ok" if not found else "corrupt"
        report["problems"] += [p.line() for p in found]
    if config.db_path.is_file() and config.release_key_path.is_file():
        from tandem.cloud_hub.keys import ReleaseKey

        checked, found = check_manifests(config.db_path, ReleaseKey.load_or_create(config.release_key_path))
        report["manifests_verified"] = checked - len(found)
        report["problems"] += [p.line() for p in found]
    return _report(report, args.json)


def _check_postgres(url: str, config: Any) -> dict[str, Any]:
    """The PostgreSQL form; the release key (for the manifests) is read from the data dir when it is there."""
    from tandem.cloud_hub.storage.pg_doctor import check_postgres

    key = None
    if config.release_key_path.is_file():
        from tandem.cloud_hub.keys import ReleaseKey

        key = ReleaseKey.load_or_create(config.release_key_path)
    found = check_postgres(url, key)
    report: dict[str, Any] = {
        "database": found.where,
        "databases": {f"schema {name}": state for name, state in found.schemas.items()},
        "versions": found.versions,
        "problems": [p.line() for p in found.problems],
    }
    if found.manifests_verified is not None:
        report["manifests_verified"] = found.manifests_verified
    return report


def _report(report: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for name, state in report["databases"].items():
            print(f"{state:<8} {name}")
        if "manifests_verified" in report:
            print(f"ok       {report['manifests_verified']} manifest signature(s) verified")
        for line in report["problems"]:
            print(f"PROBLEM  {line}")
    return 1 if report["problems"] else 0
