"""`tandem-hub publishers add|list|remove`: the publisher keys whose signed compiler output the hub registers.

Local files under the hub's data dir (run it on the hub host); a running hub reads them
on each upload, so no restart is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tandem.cloud_hub.cli_output import table
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import InvalidInputError, NotFoundError
from tandem.cloud_hub.publishers import TrustedPublishers
from tandem.protocols.cli_options import add_action

EPILOG = """examples:
  tandem-hub publishers add ~/.tandem/keys/publisher.ed25519.pub.pem --name ml-team
  tandem-hub publishers list
  tandem-hub publishers remove 3f9a0c1d2b4e5f60      # uploads signed by it are refused from now on
"""


def add_publisher_commands(sub: Any) -> None:
    """Add the `publishers` command group to tandem-hub's subparsers."""
    group = sub.add_parser(
        "publishers",
        help="trusted publisher keys (who may have models registered)",
        description="ed25519 public keys whose tandem-compile signatures the hub verifies before "
        "counter-signing with its release key.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    actions = group.add_subparsers(metavar="ACTION")
    p = _dir(
        add_action(
            actions,
            "add",
            "trust a publisher's public key (a *.pub.pem file)",
            "tandem-hub publishers add ~/.tandem/keys/publisher.ed25519.pub.pem --name ml-team",
        )
    )
    p.add_argument("pem", type=Path, help="the public half tandem-compile wrote beside its key (*.pub.pem)")
    p.add_argument("--name", default="", help="who holds the key, shown by list (default: none)")
    p.set_defaults(func=cmd_add)
    p = _dir(
        add_action(actions, "list", "the trusted publisher keys", "tandem-hub publishers list --data-dir ./tandem-data")
    )
    p.set_defaults(func=cmd_list)
    p = _dir(
        add_action(
            actions,
            "remove",
            "stop trusting a key (by key id, see list)",
            "tandem-hub publishers remove 3f9a0c1d2b4e5f60",
        )
    )
    p.add_argument("key_id", help="16 hex characters, as `tandem-hub publishers list` shows it")
    p.set_defaults(func=cmd_remove)


def _dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data-dir", type=Path, help="the hub's data dir (default: ./tandem-data or TANDEM_HUB_DATA_DIR)")
    return p


def _store(args: argparse.Namespace, *, create: bool = False) -> TrustedPublishers:
    """The data dir's publisher store; `list` and `remove` refuse a data dir that does not exist (a typo in
    --data-dir would otherwise read as "no trusted publishers"), `add` creates it."""
    config = HubConfig.load(overrides={"data_dir": args.data_dir})
    if not create and not config.data_dir.is_dir():
        raise NotFoundError(f"{config.data_dir}: no such data dir (give the hub's --data-dir)")
    return TrustedPublishers(config.publishers_dir)


def cmd_add(args: argparse.Namespace) -> int:
    try:
        pem = args.pem.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{args.pem}: {exc.strerror or exc}") from exc
    added = _store(args, create=True).add(pem, args.name)
    print(f"trusted publisher {added.key_id}" + (f" ({added.name})" if added.name else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [{"key_id": p.key_id, "name": p.name or None} for p in _store(args).list()]
    print(
        table(rows, [("key_id", "KEY ID"), ("name", "NAME")])
        if rows
        else "no trusted publishers: every upload is refused (tandem-hub publishers add KEY.pub.pem)"
    )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    _store(args).remove(args.key_id)
    print(f"removed publisher {args.key_id}")
    return 0
