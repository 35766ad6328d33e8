"""`tandem-hub pki ...`: make the fleet's CA, issue and revoke device certificates, write the broker config.

cloud_hub/cli.py includes these with `add_pki_commands(sub)`; each command is one call
into cloud_hub.pki / cloud_hub.mqtt_security on local files (run it on the hub host).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tandem.cloud_hub.cli_output import table
from tandem.cloud_hub.mqtt_security import MosquittoTlsConfig, write_mosquitto_config
from tandem.cloud_hub.pki import CERT_DAYS, Pki
from tandem.protocols.cli_options import add_action

DEFAULT_DIR = Path("tandem-data") / "pki"

EPILOG = """examples:
  tandem-hub pki init --hostname hub.example.org      # CA, hub certificate, empty CRL
  tandem-hub pki issue cam-017                        # -> tandem-data/pki/devices/cam-017/{ca,client}.crt, client.key
  tandem-hub pki revoke cam-017                       # CRL rewritten; a running hub cuts its MQTT session
  tandem-hub pki mosquitto-conf --port 8883 --out tandem-data/mosquitto-tls
  mosquitto -c tandem-data/mosquitto-tls/mosquitto.conf
"""


def add_pki_commands(sub: Any) -> None:
    """Add the `pki` command group to tandem-hub's subparsers."""
    pki = sub.add_parser(
        "pki",
        help="certificates for mutual TLS (CA, hub, per-device), revocation, broker config",
        description="A private CA for the fleet: one client certificate per device (CN = device id).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pki.set_defaults(func=lambda args: (pki.print_help(), 2)[1])
    actions = pki.add_subparsers(metavar="ACTION")

    p = _dir(
        add_action(
            actions,
            "init",
            "create the CA, the hub's certificates and an empty CRL",
            "tandem-hub pki init --hostname hub.example.org --dir tandem-data/pki",
        )
    )
    p.add_argument(
        "--hostname",
        action="append",
        default=[],
        help="extra name or IP the hub is reached by (repeatable; localhost and 127.0.0.1 are always in)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing CA (every issued certificate stops working)"
    )
    p.set_defaults(func=cmd_init)

    p = _dir(
        add_action(
            actions,
            "issue",
            "issue a device's client certificate (CN = device id)",
            "tandem-hub pki issue cam-017 --days 365   # -> <dir>/devices/cam-017/{ca,client}.crt, client.key",
        )
    )
    p.add_argument("device_id", help="the device's id, as `tandem-agent init --device-id` gives it")
    p.add_argument("--days", type=int, default=CERT_DAYS, help=f"validity in days (default {CERT_DAYS})")
    p.set_defaults(func=cmd_issue)

    p = _dir(
        add_action(
            actions,
            "revoke",
            "revoke a device's certificates and rewrite the CRL",
            "tandem-hub pki revoke cam-017",
        )
    )
    p.add_argument("device_id", help="the device whose certificates stop working")
    p.set_defaults(func=cmd_revoke)

    p = _dir(
        add_action(
            actions, "list", "issued certificates: name, kind, serial, expiry, revocation", "tandem-hub pki list"
        )
    )
    p.set_defaults(func=cmd_list)

    p = _dir(
        add_action(
            actions,
            "mosquitto-conf",
            "write a Mosquitto config: TLS listener, client certs, ACL",
            "tandem-hub pki mosquitto-conf --port 8883 --out tandem-data/mosquitto-tls",
        )
    )
    p.add_argument("--out", type=Path, required=True, help="folder for mosquitto.conf and acl")
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--no-persistence", action="store_true", help="do not keep queued messages across restarts")
    p.set_defaults(func=cmd_mosquitto_conf)


def _dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"PKI folder (default {DEFAULT_DIR})")
    return p


def cmd_init(args: argparse.Namespace) -> int:
    pki = Pki.init(args.dir, args.hostname, force=args.force)
    print(f"CA and hub certificates in {pki.root}")
    print(f"  broker/gRPC server: {pki.hub_server_files().cert}")
    print(f"  CA key (keep it offline if you can): {pki.ca_key_path}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    files = Pki(args.dir).issue_device(args.device_id, days=args.days)
    print(f"device {args.device_id}: copy these three files to the device (the key is secret)")
    for path in (files.ca, files.cert, files.key):
        print(f"  {path}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    serials = pki.revoke(args.device_id)
    print(f"revoked {len(serials)} certificate(s) of {args.device_id}; CRL: {pki.crl_path}")
    print(
        "gRPC refuses them now; a running hub restarts its own Mosquitto within seconds, cutting their open "
        "MQTT sessions (an external broker: restart it; SIGHUP alone refuses only new connections)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [
        {
            "name": r.name,
            "kind": r.kind,
            "serial": f"{r.serial:x}"[:16],
            "expires": r.not_after[:10],
            "revoked": r.revoked_at[:19] if r.revoked_at else None,
        }
        for r in Pki(args.dir).issued()
    ]
    print(
        table(
            rows,
            [("name", "name"), ("kind", "kind"), ("serial", "serial"), ("expires", "expires"), ("revoked", "revoked")],
        )
    )
    return 0


def cmd_mosquitto_conf(args: argparse.Namespace) -> int:
    conf = write_mosquitto_config(
        Pki(args.dir), MosquittoTlsConfig(args.out.resolve(), args.port, args.host, persistence=not args.no_persistence)
    )
    print(f"wrote {conf} and {conf.parent / 'acl'}; run: mosquitto -c {conf}")
    print(f"agents connect with mqtts://<hub>:{args.port}; the hub's MQTT clients use {DEFAULT_DIR / 'hub'}/hub.crt")
    return 0
