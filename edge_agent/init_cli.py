"""The `tandem-agent init` subcommand: parse flags, call edge_agent.init_config.join, say what was written."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.init_config import InitRequest, join

__all__ = ["add_init_command"]


def _tag(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{item!r}: expected key=value, e.g. site=lab")
    return key, value


def _init(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("TANDEM_HUB_TOKEN")
    hub = args.hub or os.environ.get("TANDEM_HUB_URL")
    if not hub:
        raise ConfigError("init needs the hub's REST URL: --hub http://HOST:8080 (or TANDEM_HUB_URL)")
    if not token:
        raise ConfigError("init needs a hub token that may register devices: --token (or TANDEM_HUB_TOKEN)")
    fields: dict[str, Any] = {
        "hub": hub,
        "token": token,
        "out": args.out,
        "model_dir": args.model_dir,
        "profile": args.profile,
        "data_dir": args.data_dir,
        "tags": dict(args.tag),
        "trust_keys": tuple(args.trust_key),
        "tls_dir": args.tls_dir,
        "ca": args.ca or (Path(os.environ["TANDEM_HUB_CA"]) if os.environ.get("TANDEM_HUB_CA") else None),
        "http_port": args.http_port,
        "force": args.force,
    }
    if args.device_id:
        fields["device_id"] = args.device_id
    result = join(InitRequest(**fields))
    print(
        f"wrote {result.config_path} (0600: it holds the device's {result.device_token} token) and the hub's "
        f"release key {result.release_key_path}; device {fields.get('device_id') or 'this host'} is registered.\n"
        f"next: tandem-agent run --config {args.out}",
        file=sys.stderr,
    )
    return 0


def add_init_command(sub: Any) -> None:
    """`tandem-agent init --hub URL --token T --model-dir DIR --out agent.toml`."""
    p = sub.add_parser(
        "init",
        help="join a hub: register this device and write a working agent.toml",
        description="Ask the hub for its gRPC and MQTT endpoints and release key, register the device, "
        "and write an agent config (paths without root, this agent's own socket and health port, OTA on).",
        epilog="example:\n  tandem-agent init --hub http://127.0.0.1:8080 --token tdm_... --device-id cam-017 \\\n"
        "      --model-dir out/digits-edge --trust-key ~/.tandem/keys/publisher.ed25519.pub.pem --out cam-017.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hub", help="the hub's REST URL, e.g. http://127.0.0.1:8080 (env TANDEM_HUB_URL)")
    p.add_argument(
        "--token",
        help="a hub token of scope operate or admin (env TANDEM_HUB_TOKEN); with admin the "
        "device gets a device-scope token of its own, otherwise this one is written",
    )
    p.add_argument("--out", type=Path, required=True, help="the agent.toml to write")
    p.add_argument("--model-dir", type=Path, required=True, help="the compiled model folder to serve first")
    p.add_argument("--device-id", help="default: the host name (with --tls-dir it must be the certificate's CN)")
    p.add_argument("--profile", default="cpu-x86", help="hardware profile (default cpu-x86)")
    p.add_argument("--data-dir", type=Path, help="the agent's state folder (default: <out folder>/<device>-data)")
    p.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE", help="cohort tag (repeatable)")
    p.add_argument(
        "--trust-key",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="also trust folders signed by this public key, e.g. your publisher key (repeatable)",
    )
    p.add_argument("--tls-dir", type=Path, help="this device's `tandem-hub pki issue` folder (mutual TLS)")
    p.add_argument("--ca", type=Path, help="CA that verifies an https:// hub (default: the --tls-dir ca.crt)")
    p.add_argument("--http-port", type=int, help="the agent's health port (default 9464 when free, else a free one)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_init)
