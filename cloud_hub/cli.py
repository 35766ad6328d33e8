"""tandem-hub: run the hub and manage its models, devices and tokens.

Everything but `serve` and a local `tokens create` goes through the REST API
(URL and token from --url/--token or TANDEM_HUB_URL/TANDEM_HUB_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import tandem
from tandem.cloud_hub.cli_output import ago, table
from tandem.cloud_hub.client import DEFAULT_URL, HubClient
from tandem.cloud_hub.errors import HubError
from tandem.protocols.cli_options import PRECEDENCE, add_action, add_log_level, configure_logging, os_error_line
from tandem.protocols.stop_signal import StopSignal

EPILOG = f"""examples:
  tandem-hub tokens create --scope admin --name me --data-dir ./tandem-data   # first admin token
  tandem-hub serve --model-dir compiled/digits-cloud
  export TANDEM_HUB_URL=http://127.0.0.1:8080 TANDEM_HUB_TOKEN=tdm_...
  tandem-hub models register compiled/digits
  tandem-hub devices list --status offline --tag site=lyon

{PRECEDENCE}; --log-level LEVEL goes before or after the command.
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args)
    try:
        return args.func(args)
    except HubError as exc:
        print(f"tandem-hub: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a --data-dir or --dir that is a file, no permission, a full disk: one line
        logging.getLogger(__name__).debug("file error", exc_info=True)
        print(f"tandem-hub: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while a command waits (serve stops on SIGINT by itself)
        print("tandem-hub: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem-hub",
        description="The Tandem cloud hub: fleet home and cloud inference.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tandem.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the hub (REST console, MQTT broker, telemetry, rollouts, gRPC inference)",
        description="Run the hub in the foreground until Ctrl-C. Flags override TANDEM_HUB_* env "
        "vars, which override --config.",
        epilog="examples:\n"
        "  tandem-hub serve --model-dir out/digits-cloud --data-dir ./tandem-data\n"
        "  tandem-hub serve --config hub.toml --http-port 0 --grpc-port 0   # any free ports; the URLs are printed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, help="TOML file with hub settings ([http], [grpc], [mqtt], ... sections)")
    serve.add_argument("--data-dir", type=Path, help="database, artifacts and keys (default ./tandem-data)")
    serve.add_argument(
        "--database-url",
        help="keep the hub's state in PostgreSQL (postgresql://user:password@host:5432/db) instead of SQLite files "
        "in the data dir (config [storage] database_url, env TANDEM_HUB_STORAGE_DATABASE_URL)",
    )
    serve.add_argument("--http-host", help="REST listen address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="REST port (default 8080; 0 = any free port)")
    serve.add_argument("--grpc-port", type=int, help="gRPC inference port (default 8001; 0 = any free port)")
    serve.add_argument(
        "--alias",
        action="append",
        dest="model_aliases",
        metavar="ASKED=SERVED",
        help="answer gRPC requests for model ASKED with model SERVED, e.g. digits-edge=digits-cloud (repeatable)",
    )
    serve.add_argument("--grpc-host", help="gRPC inference listen address (default 127.0.0.1; 0.0.0.0 for a fleet)")
    serve.add_argument("--mqtt-host", help="listen address of the broker the hub starts (default 127.0.0.1)")
    serve.add_argument(
        "--mqtt-port",
        type=int,
        help="port of the broker the hub starts (default: 1883 when free, "
        "else a free port; chosen once and kept in the data dir)",
    )
    serve.add_argument(
        "--model-dir",
        type=Path,
        action="append",
        dest="model_dirs",
        help="compiled model directory to serve over gRPC (repeatable)",
    )
    serve.add_argument(
        "--inference-profile", help="hardware profile whose variant gRPC inference runs (default cpu-x86)"
    )
    serve.add_argument("--mqtt-url", help="use this broker (mqtt://host:port) instead of starting one")
    serve.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        help="which broker to start when --mqtt-url is not given (default auto: Mosquitto if installed)",
    )
    serve.add_argument(
        "--public-url",
        help="the hub's HTTP URL as devices reach it, for OTA downloads (default: the URL it listens on)",
    )
    serve.add_argument(
        "--telemetry",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ingest device telemetry over MQTT and run the drift engine (default on)",
    )
    serve.add_argument(
        "--rollouts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run staged OTA rollouts: /v1/rollouts and `tandem-hub ota` (default on)",
    )
    serve.add_argument(
        "--drift-eval-interval",
        type=float,
        dest="drift_eval_interval_s",
        metavar="SECONDS",
        help="how often the drift engine evaluates every cohort (default 10)",
    )
    serve.add_argument(
        "--tls-dir",
        type=Path,
        help="mutual TLS from a `tandem-hub pki init` folder: Mosquitto with "
        "the fleet ACL, mqtts:// for the hub's clients, device certificates on gRPC (default: plain text)",
    )
    serve.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run as one of several hub replicas on one database and data dir (needs --mqtt-url; default off)",
    )
    serve.add_argument("--replica-id", help="this replica's unique name (default <hostname>-<pid>)")
    serve.set_defaults(func=cmd_serve, default_log_level="info")

    models = _group(sub, "models", "register and list models")
    p = _remote(
        add_action(
            models,
            "register",
            "upload a compiled model directory (versions are immutable)",
            "tandem-hub models register out/digits-edge",
        )
    )
    p.add_argument("dir", type=Path, help="a directory written by tandem-compile (with manifest.json)")
    p.set_defaults(func=cmd_models_register)
    p = _remote(
        _paged(
            add_action(
                models,
                "list",
                "list models, or the versions of one with --name",
                "tandem-hub models list",
                "tandem-hub models list --name digits-edge --json",
            )
        )
    )
    p.add_argument("--name", help="show the versions of this model")
    p.set_defaults(func=cmd_models_list)
    p = _remote(
        add_action(
            models,
            "show",
            "a version's variants per profile (--json: the signed manifest)",
            "tandem-hub models show digits-edge 1.0.0",
        )
    )
    p.add_argument("name", help="the model's name, e.g. digits-edge")
    p.add_argument("version", help="MAJOR.MINOR.PATCH, e.g. 1.0.0")
    p.set_defaults(func=cmd_models_show)

    devices = _group(sub, "devices", "list devices")
    p = _remote(
        _paged(
            add_action(
                devices,
                "list",
                "list devices with status and model",
                "tandem-hub devices list --status offline --tag site=lyon",
            )
        )
    )
    p.add_argument("--status", choices=("online", "offline"), help="only devices online or offline")
    p.add_argument("--profile", help="only devices of this hardware profile, e.g. cpu-arm")
    p.add_argument("--tag", action="append", default=[], help="key=value (repeatable; all must match)")
    p.set_defaults(func=cmd_devices_list)

    keys = _group(sub, "keys", "the release key agents trust")
    p = _remote(
        keys.add_parser(
            "release",
            help="print (or save) the hub's public release key, PEM",
            description="Agents verify every manifest with this key: copy it to each device "
            "(e.g. --out /etc/tandem/release.pub.pem).",
            epilog="example:\n  tandem-hub keys release --out release.pub.pem",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    p.add_argument("--out", type=Path, help="write the PEM to this file instead of printing it")
    p.set_defaults(func=cmd_keys_release)

    tokens = _group(sub, "tokens", "create, list and revoke API tokens")
    p = _remote(
        tokens.add_parser(
            "create",
            help="create a token (shown once)",
            description="With --data-dir (or with neither a hub URL nor a token) the token is written straight "
            "into that data dir's database: this is how the first admin token is made. "
            "Otherwise it is created over REST with an admin token.",
            epilog="examples:\n  tandem-hub tokens create --scope admin --name me --data-dir ./tandem-data\n"
            "  tandem-hub tokens create --scope read --name grafana --url http://127.0.0.1:8080   # over REST, "
            "TANDEM_HUB_TOKEN admin",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    p.add_argument(
        "--scope",
        choices=("device", "read", "operate", "admin"),
        help="device (with --device: what one agent's config carries), read, operate or admin",
    )
    p.add_argument("--device", help="the device a --scope device token belongs to (implies --scope device)")
    p.add_argument("--name", required=True, help="who or what uses it, e.g. ci, grafana, cam-017")
    p.add_argument("--data-dir", type=Path, help="create it in this local hub data dir instead of over REST")
    p.set_defaults(func=cmd_tokens_create)
    p = _remote(add_action(tokens, "list", "list tokens (never their secrets)", "tandem-hub tokens list --json"))
    p.set_defaults(func=cmd_tokens_list)
    p = _remote(add_action(tokens, "revoke", "revoke a token by id", "tandem-hub tokens revoke 3f9a0c1d2b4e"))
    p.add_argument(
        "token_id", help="the token's id (12 hex characters, as `tandem-hub tokens list` shows it; not its secret)"
    )
    p.set_defaults(func=cmd_tokens_revoke)

    from tandem.cloud_hub.check_cli import add_check_command
    from tandem.cloud_hub.ota_cli import add_ota_commands
    from tandem.cloud_hub.pki_cli import add_pki_commands
    from tandem.cloud_hub.publishers_cli import add_publisher_commands
    from tandem.cloud_hub.site_bridge_cli import add_site_broker_commands
    from tandem.cloud_hub.storage_cli import add_storage_commands

    add_check_command(sub)
    add_ota_commands(sub)
    add_pki_commands(sub)
    add_publisher_commands(sub)
    add_site_broker_commands(sub)
    add_storage_commands(sub)
    return add_log_level(parser, "warning")


def _group(sub: Any, name: str, help_text: str) -> Any:
    """A command with actions; run without one, it prints its own help."""
    group = sub.add_parser(name, help=help_text, description=help_text)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    return group.add_subparsers(metavar="ACTION")


def _remote(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--url", help=f"hub URL (env TANDEM_HUB_URL, default {DEFAULT_URL})")
    p.add_argument("--token", help="bearer token (env TANDEM_HUB_TOKEN)")
    p.add_argument(
        "--ca",
        type=Path,
        help="CA that verifies an https:// hub, e.g. <tls_dir>/ca.crt "
        "(env TANDEM_HUB_CA; default: the system trust store)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _paged(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.add_argument("--offset", type=int, default=0, help="skip this many rows first (default 0)")
    return p


def _client(args: argparse.Namespace) -> HubClient:
    return HubClient(args.url, args.token, ca=getattr(args, "ca", None))


def _emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> int:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render(data))
    return 0


def _page_footer(page: dict[str, Any]) -> str:
    shown = len(page["items"])
    if page["total"] > shown:
        return f"\n({shown} of {page['total']}; --offset {page['offset'] + shown} for more)"
    return ""


def cmd_serve(args: argparse.Namespace) -> int:
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    flags = {
        "data_dir": args.data_dir,
        "storage.database_url": args.database_url,
        "http.host": args.http_host,
        "http.port": args.http_port,
        "grpc.port": args.grpc_port,
        "grpc.host": args.grpc_host,
        "mqtt.host": args.mqtt_host,
        "mqtt.port": args.mqtt_port,
        "models.aliases": tuple(args.model_aliases) if args.model_aliases else None,
        "models.dirs": tuple(args.model_dirs) if args.model_dirs else None,
        "mqtt.url": args.mqtt_url,
        "mqtt.broker": args.broker,
        "models.inference_profile": args.inference_profile,
        "http.public_url": args.public_url,
        "telemetry.enabled": args.telemetry,
        "rollouts.enabled": args.rollouts,
        "drift.eval_interval_s": args.drift_eval_interval_s,
        "tls_dir": args.tls_dir,
        "cluster.enabled": args.cluster,
        "cluster.replica_id": args.replica_id,
    }
    config = HubConfig.load(args.config, overrides=flags)
    hub = Hub(config)
    stop = StopSignal().install()  # not Event.set() in a handler: that can deadlock (protocols/stop_signal.py)
    try:
        hub.start()
        urls = hub.urls()
        print(f"tandem-hub serving (data dir {config.data_dir.resolve()})")
        for name, url in urls.items():
            print(f"  {name:<9} {url}")
        if config.tls_dir is None:
            print(
                "tandem-hub: WARNING: PLAIN TEXT, development only: MQTT and gRPC run without TLS or client "
                "certificates, so anyone on the network can read them and pose as a device; for a fleet run "
                "`tandem-hub pki init` and serve with --tls-dir (docs/security.md)",
                file=sys.stderr,
            )
        else:
            print(
                f"  mutual TLS from {config.tls_dir.resolve()}; REST is HTTPS: clients verify it with "
                f"--ca {(config.tls_dir / 'ca.crt').resolve()} (env TANDEM_HUB_CA)"
            )
        if not hub.tokens.list(include_revoked=False):
            print(
                f"no API tokens yet: tandem-hub tokens create --scope admin --name admin --data-dir {config.data_dir}"
            )
        sys.stdout.flush()
        stop.wait()
    finally:
        hub.stop()
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.register_model_dir(args.dir)
    verb = "registered" if result["created"] else "already registered (same content)"
    return _emit(
        args, result, lambda r: f"{verb}: {r['name']} {r['version']} (content sha256 {r['content_sha256'][:16]}…)"
    )


def cmd_models_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.name:
            page = client.list_versions(args.name, args.limit, args.offset)
            cols = [("version", "version"), ("size", "size"), ("created_at", "created"), ("registered", "registered")]
            render = lambda p: (
                table(
                    [{**v, "size": _size(v["size_bytes"]), "registered": ago(v["registered_at"])} for v in p["items"]],
                    cols,
                )
                + _page_footer(p)
            )
        else:
            page = client.list_models(None, args.limit, args.offset)
            cols = [("name", "name"), ("latest_version", "latest"), ("versions", "versions"), ("updated", "updated")]
            render = lambda p: (
                table([{**m, "updated": ago(m["updated_at"])} for m in p["items"]], cols) + _page_footer(p)
            )
    return _emit(args, page, render)


def cmd_models_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        manifest = client.manifest(args.name, args.version)
    if args.json:
        return _emit(args, manifest, str)
    variants = {v["id"]: v for v in manifest["variants"]}
    rows = []
    for profile, choice in sorted(manifest["profiles"].items()):
        variant = variants.get(choice.get("chosen") or "", {})
        rows.append(
            {
                "profile": profile,
                "variant": choice.get("chosen"),
                "runtime": variant.get("runtime"),
                "precision": variant.get("precision"),
                "reason": choice.get("reason"),
            }
        )
    head = (
        f"{manifest['name']} {manifest['version']}  signed by key {manifest.get('signature', {}).get('key_id', '-')}"
        f"  expires {manifest.get('expires_at') or 'never'}"
    )
    cols = [
        ("profile", "profile"),
        ("variant", "variant"),
        ("runtime", "runtime"),
        ("precision", "precision"),
        ("reason", "reason"),
    ]
    print(head + "\n" + table(rows, cols))
    return 0


def cmd_keys_release(args: argparse.Namespace) -> int:
    with _client(args) as client:
        key = client.release_key()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(key["public_key_pem"])
        print(f"wrote release key {key['key_id']} to {args.out}", file=sys.stderr)
        return 0
    return _emit(args, key, lambda k: k["public_key_pem"].rstrip())


def cmd_devices_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_devices(args.status, args.profile, args.tag, args.limit, args.offset)
    cols = [
        ("device_id", "device"),
        ("status", "status"),
        ("profile", "profile"),
        ("model", "model"),
        ("agent_version", "agent"),
        ("seen", "last seen"),
        ("tags", "tags"),
    ]

    def render(p: dict[str, Any]) -> str:
        rows = [
            {
                **d,
                "model": f"{d['model_name']} {d['model_version'] or ''}".strip() if d["model_name"] else None,
                "seen": ago(d["last_seen"]),
                "tags": ",".join(f"{k}={v}" for k, v in sorted(d["tags"].items())) or None,
            }
            for d in p["items"]
        ]
        return table(rows, cols) + _page_footer(p)

    return _emit(args, page, render)


def cmd_tokens_create(args: argparse.Namespace) -> int:
    import os

    if args.device is not None and args.scope not in (None, "device"):
        raise HubError(f"--device makes a 'device' token; it cannot be combined with --scope {args.scope}")
    scope = args.scope or ("device" if args.device is not None else None)
    if scope is None:
        raise HubError("tokens create needs --scope (or --device DEVICE for a device's own token)")

    # A URL or a token means a hub to ask over REST; only with neither is the token written locally (into
    # ./tandem-data, which a token meant for a running hub elsewhere would silently not reach).
    remote = args.url or os.environ.get("TANDEM_HUB_URL") or args.token or os.environ.get("TANDEM_HUB_TOKEN")
    if args.data_dir is not None or not remote:
        from tandem.cloud_hub.auth import TokenStore
        from tandem.cloud_hub.config import HubConfig
        from tandem.cloud_hub.storage import open_database

        config = HubConfig.load(overrides={"data_dir": args.data_dir})
        db = open_database(config.database)
        try:
            new = TokenStore(db).create(args.name, scope, args.device)
        finally:
            db.close()
        result = {**new.info.to_dict(), "token": new.token}
    else:
        with _client(args) as client:
            result = client.create_token(args.name, scope, args.device)
    return _emit(
        args,
        result,
        lambda r: f"token {r['token_id']} ({r['name']}, scope {r['scope']}); shown once, keep it:\n{r['token']}",
    )


def cmd_tokens_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tokens = client.list_tokens()
    cols = [("token_id", "id"), ("name", "name"), ("scope", "scope"), ("state", "state"), ("used", "last used")]
    return _emit(
        args,
        tokens,
        lambda ts: table(
            [{**t, "state": "revoked" if t["revoked"] else "active", "used": ago(t["last_used_at"])} for t in ts], cols
        ),
    )


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.revoke_token(args.token_id)
    return _emit(args, result, lambda r: f"revoked token {r['token_id']} ({r['name']})")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


if __name__ == "__main__":
    sys.exit(main())
