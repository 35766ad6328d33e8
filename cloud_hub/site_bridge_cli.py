"""`tandem-hub site-broker conf SITE`: a site's Mosquitto config, bridged to the centre over mutual TLS.

cloud_hub/cli.py includes it with `add_site_broker_commands(sub)`; it is one call into
cloud_hub.site_bridge on the hub host's PKI folder (run it where `tandem-hub pki` runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tandem.cloud_hub.pki import Pki
from tandem.cloud_hub.pki_cli import DEFAULT_DIR
from tandem.cloud_hub.site_bridge import SiteBridgeConfig, write_site_broker

EPILOG = """examples:
  tandem-hub site-broker conf lyon --centre mqtts://hub.example.org:8883 --out site-lyon
  scp -r site-lyon lyon-gw:/etc/tandem/          # then, on the site: mosquitto -c /etc/tandem/site-lyon/mosquitto.conf
  # devices at the site: mqtt_url = "mqtt://lyon-gw:1883"

The centre's broker lists site identities in its ACL when it starts: restart the hub (or rerun
`tandem-hub pki mosquitto-conf` and restart an external broker) after a site's first certificate.
"""


def add_site_broker_commands(sub: Any) -> None:
    """Add the `site-broker` command group to tandem-hub's subparsers."""
    group = sub.add_parser(
        "site-broker",
        help="Mosquitto config for a site broker bridged to the centre (QoS 1, persistent, mutual TLS)",
        description="A site's devices publish to a broker on their LAN; it bridges telemetry, status and OTA "
        "progress up to the centre and OTA commands down, queueing both ways while the link is down.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    actions = group.add_subparsers(metavar="ACTION")
    p = actions.add_parser(
        "conf",
        help="issue the site's bridge certificate (once) and write its mosquitto.conf",
        description="Issue the site's bridge certificate (once) and write its mosquitto.conf.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("site", help="the site's name (one topic level, like a device id), e.g. lyon")
    p.add_argument("--centre", required=True, metavar="URL", help="the centre's TLS broker, mqtts://host:port")
    p.add_argument("--out", type=Path, required=True, help="folder for mosquitto.conf, tls/ and data/")
    p.add_argument("--listen-host", default="127.0.0.1", help="the site listener's address (default 127.0.0.1)")
    p.add_argument("--listen-port", type=int, default=1883, help="the site listener's port (default 1883)")
    p.add_argument("--days", type=int, help="validity of a newly issued bridge certificate (default 825)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"PKI folder (default {DEFAULT_DIR})")
    p.set_defaults(func=cmd_conf)


def cmd_conf(args: argparse.Namespace) -> int:
    config = SiteBridgeConfig(
        args.site, args.centre, args.out.resolve(), listen_host=args.listen_host, listen_port=args.listen_port
    )
    conf = write_site_broker(Pki(args.dir), config, days=args.days)
    print(f"site {args.site}: wrote {conf} (bridge identity {config.identity}); on the site run: mosquitto -c {conf}")
    print(
        f"devices there use mqtt://{args.listen_host}:{args.listen_port}; restart the centre's broker once so its ACL lists {config.identity}"
    )
    return 0
