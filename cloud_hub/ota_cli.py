"""`tandem-hub ota ...`: start and steer rollouts over the REST API.

cloud_hub/cli.py includes these with `add_ota_commands(sub)`; every command is one
REST call (POST /v1/rollouts, GET /v1/rollouts[/{id}], POST /v1/rollouts/{id}/<action>).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from tandem.cloud_hub.cli_output import ago, table
from tandem.cloud_hub.client import DEFAULT_URL, HubClient
from tandem.cloud_hub.errors import InvalidInputError
from tandem.cloud_hub.rollouts.controller import GatePolicy
from tandem.protocols.cli_options import add_action

GATE_KEYS = {f.name: f.type for f in dataclasses.fields(GatePolicy)}

EPILOG = """examples:
  tandem-hub ota rollout start --model digits --version 1.2.0 --select profile=cpu-x86,site=lyon \\
      --waves 5,25,100 --gate max_failure_rate=0.02 --gate min_reporting=0.9
  tandem-hub ota status                 # every rollout
  tandem-hub ota status ro-1a2b3c4d5e   # one rollout: waves, devices, recent steps
  tandem-hub ota rollback ro-1a2b3c4d5e
"""


def add_ota_commands(sub: Any) -> None:
    """Add the `ota` command group to tandem-hub's subparsers."""
    ota = sub.add_parser(
        "ota",
        help="roll models out to devices in waves, and steer rollouts",
        description="Signed OTA rollouts in waves with gates and automatic rollback.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ota.set_defaults(func=lambda args: (ota.print_help(), 2)[1])
    actions = ota.add_subparsers(metavar="ACTION")

    rollout = actions.add_parser("rollout", help="start a rollout", description="start a rollout")
    rollout.set_defaults(func=lambda args: (rollout.print_help(), 2)[1])
    start = _remote(
        add_action(
            rollout.add_subparsers(metavar="ACTION"),
            "start",
            "roll a registered model version out in waves",
            "tandem-hub ota rollout start --model digits-edge --version 1.1.0 --select profile=cpu-x86 --waves 5,25,100",
        )
    )
    start.add_argument("--model", required=True, help="a registered model's name")
    start.add_argument("--version", required=True, help="its registered version, MAJOR.MINOR.PATCH")
    start.add_argument(
        "--select",
        default="",
        help="profile=...,KEY=VALUE (device tags); all must match (default: every registered device)",
    )
    start.add_argument("--waves", default="5,25,100", help="cumulative percentages ending at 100 (default 5,25,100)")
    start.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"gate setting (repeatable): {', '.join(GATE_KEYS)}",
    )
    start.add_argument("--device", action="append", dest="devices", help="only these device ids (repeatable)")
    start.set_defaults(func=cmd_start)

    status = _remote(
        add_action(
            actions,
            "status",
            "list rollouts, or show one",
            "tandem-hub ota status",
            "tandem-hub ota status ro-1a2b3c4d5e",
        )
    )
    status.add_argument("rollout_id", nargs="?", help="one rollout's id (default: list them all)")
    status.add_argument("--events", type=int, default=20, help="recent steps to show for one rollout (default 20)")
    status.set_defaults(func=cmd_status)

    for name, text in (
        ("pause", "send no more commands until resumed"),
        ("resume", "continue a paused or halted rollout"),
        ("abort", "stop for good; devices keep what they run"),
        ("rollback", "tell every device that took the version to go back"),
    ):
        p = _remote(add_action(actions, name, text, f"tandem-hub ota {name} ro-1a2b3c4d5e"))
        p.add_argument("rollout_id", help="the rollout's id, as `tandem-hub ota status` lists it")
        p.set_defaults(func=cmd_action, action=name)


def _remote(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--url", help=f"hub URL (env TANDEM_HUB_URL, default {DEFAULT_URL})")
    p.add_argument("--token", help="bearer token (env TANDEM_HUB_TOKEN); operate scope to change, read to view")
    p.add_argument(
        "--ca",
        type=Path,
        help="CA that verifies an https:// hub, e.g. <tls_dir>/ca.crt "
        "(env TANDEM_HUB_CA; default: the system trust store)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def parse_select(text: str) -> dict[str, str]:
    """'profile=cpu-x86,site=lyon' -> {'profile': 'cpu-x86', 'site': 'lyon'}."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--select {item!r}: expected KEY=VALUE, e.g. profile=cpu-x86,site=lyon")
        out[key] = value
    return out


def parse_gates(items: list[str]) -> dict[str, Any]:
    """['max_failure_rate=0.05', 'auto_rollback=false', 'wave_timeout_s=none'] -> typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in GATE_KEYS:
            raise InvalidInputError(f"--gate {item!r}: expected KEY=VALUE with KEY one of {', '.join(GATE_KEYS)}")
        kind = str(GATE_KEYS[key])
        try:
            if kind.startswith("bool"):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("true", "1", "yes")
            elif "None" in kind and raw.lower() in ("none", "null", ""):
                out[key] = None
            elif kind.startswith("int"):
                out[key] = int(raw)
            else:
                out[key] = float(raw)
        except ValueError:
            raise InvalidInputError(f"--gate {key}: {raw!r} is not a {kind.split(' ')[0]}") from None
    return out


def cmd_start(args: argparse.Namespace) -> int:
    body = {
        "model": args.model,
        "version": args.version,
        "select": parse_select(args.select),
        "waves": [int(w) for w in args.waves.split(",") if w.strip()]
        if all(w.strip().isdigit() for w in args.waves.split(","))
        else _bad_waves(args.waves),
        "gates": parse_gates(args.gate),
        "device_ids": args.devices,
    }
    with HubClient(args.url, args.token, ca=args.ca) as client:
        result = client.request("POST", "/v1/rollouts", json=body)
    return _emit(args, result, render_detail)


def _bad_waves(text: str) -> list[int]:
    raise InvalidInputError(f"--waves {text!r}: expected percentages like 5,25,100")


def cmd_status(args: argparse.Namespace) -> int:
    with HubClient(args.url, args.token, ca=args.ca) as client:
        if args.rollout_id:
            result = client.request("GET", f"/v1/rollouts/{args.rollout_id}", params={"events": args.events})
            return _emit(args, result, render_detail)
        result = client.request("GET", "/v1/rollouts")
    return _emit(args, result, render_list)


def cmd_action(args: argparse.Namespace) -> int:
    with HubClient(args.url, args.token, ca=args.ca) as client:
        result = client.request("POST", f"/v1/rollouts/{args.rollout_id}/{args.action}")
    return _emit(args, result, render_detail)


def _emit(args: argparse.Namespace, data: Any, render: Any) -> int:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render(data))
    return 0


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def render_list(page: dict[str, Any]) -> str:
    rows = [
        {
            **r,
            "what": f"{r['model']} {r['version']}",
            "wave_of": f"{r['wave']}/{len(r['waves'])}",
            "devices_by_state": _counts(r["counts"]),
            "updated": ago(r["updated_at"]),
        }
        for r in page["items"]
    ]
    return table(
        rows,
        [
            ("rollout_id", "rollout"),
            ("what", "model"),
            ("status", "status"),
            ("wave_of", "wave"),
            ("devices_by_state", "devices"),
            ("updated", "updated"),
            ("reason", "reason"),
        ],
    )


def render_detail(r: dict[str, Any]) -> str:
    lines = [
        f"rollout {r['rollout_id']}: {r['model']} {r['version']} — {r['status']}, wave {r['wave']} of "
        f"{len(r['waves'])} ({', '.join(f'{w}%' for w in r['waves'])})"
    ]
    if r.get("reason"):
        lines.append(f"reason: {r['reason']}")
    lines.append(f"devices: {_counts(r['counts'])}")
    lines.append("")
    lines.append(
        table(
            r.get("device_states", []),
            [
                ("device_id", "device"),
                ("wave", "wave"),
                ("state", "state"),
                ("step", "last step"),
                ("reason", "reason"),
            ],
        )
    )
    events = r.get("events") or []
    if events:
        lines.append("")
        lines.append("recent steps:")
        for e in events:
            detail = e["detail"]
            what = detail.get("step") or detail.get("reason") or ", ".join(f"{k}={v}" for k, v in detail.items())
            lines.append(f"  {ago(e['at']):>10}  {e['kind']:<12} {e.get('device_id') or '':<16} {what}")
    return "\n".join(lines)
