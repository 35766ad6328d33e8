"""tandem-agent: a thin command line over edge_agent (run the daemon, check a config, send a request)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import tandem
from tandem.edge_agent.config import ENV_PREFIX, SECTIONS, AgentConfig, default_endpoint
from tandem.edge_agent.errors import AgentError, ConfigError, exit_code
from tandem.protocols.cli_options import PRECEDENCE, add_log_level, configure_logging, os_error_line
from tandem.protocols.stop_signal import StopSignal

if TYPE_CHECKING:
    from tandem.edge_agent.agent import Agent
    from tandem.edge_agent.hub_probe import HubProbe

EPILOG = f"""\
examples:
  tandem-agent run --config /etc/tandem/agent.toml
  tandem-agent check --config agent.toml
  tandem-agent init --hub http://127.0.0.1:8080 --token tdm_... --model-dir out/digits-edge --out agent.toml
  tandem-agent infer --config agent.toml --input x.npy
  tandem-agent infer --input batch.npz --endpoint tcp://127.0.0.1:5555 --threshold 0.9 --json
  tandem-agent status --config agent.toml        (model version, OTA state, telemetry outbox)

configuration: a TOML file (see examples/agent/agent.toml); every key can also be set
with an environment variable {ENV_PREFIX}<SECTION>_<KEY>, e.g. {ENV_PREFIX}MODEL_DIR=/var/lib/tandem/model
or {ENV_PREFIX}FALLBACK_DEADLINE_MS=150, which wins over the file; --model-dir, --endpoint and
--http-port win over both.
{PRECEDENCE}
default endpoint: {default_endpoint()}
"""


def config_keys_help() -> str:
    """Every config key by TOML section, for `run --help` and `check --help`."""
    lines = [
        f"config keys by TOML section (each also {ENV_PREFIX}<SECTION>_<KEY>; commented sample: "
        "examples/agent/agent.toml):"
    ]
    for section, keys in SECTIONS.items():
        lines.append(
            textwrap.fill(f"[{section}] " + ", ".join(keys), width=88, initial_indent="  ", subsequent_indent="      ")
        )
    return "\n".join(lines) + "\n"


def _load_config(args: argparse.Namespace) -> AgentConfig:
    """The file (or env vars alone), then command-line flags on top."""
    if args.config is not None:
        config = AgentConfig.load(args.config)
    else:
        try:
            config = AgentConfig.from_mapping({"model": {"dir": str(args.model_dir)}} if args.model_dir else {})
        except ConfigError as exc:
            if not str(exc).startswith("model.dir: required"):
                raise
            raise ConfigError(
                f"no config and no model: give --config agent.toml (`tandem-agent init` writes one), "
                f"--model-dir DIR or {ENV_PREFIX}MODEL_DIR"
            ) from None
    overrides = {
        k: v
        for k, v in (
            ("model.dir", args.model_dir),
            ("server.endpoint", args.endpoint),
            ("health.http_port", args.http_port),
        )
        if v is not None
    }
    return config.with_overrides(overrides) if overrides else config


def _seconds(value: str) -> float:
    """argparse `type=`: a positive number of seconds (0 or less would give up before asking)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: give a positive, finite number of seconds, e.g. 5")
    return seconds


def _notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: Type=notify units learn we are ready."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), path)
    except OSError as exc:
        logging.getLogger(__name__).warning("sd_notify failed: %s", exc)


def _run(args: argparse.Namespace) -> int:
    from tandem.edge_agent.agent import Agent

    agent = Agent(_load_config(args))
    stop = StopSignal().install()  # not Event.set() in a handler: that can deadlock (protocols/stop_signal.py)
    agent.start()
    print(f"tandem-agent: {_describe(agent)}", file=sys.stderr, flush=True)
    _notify_systemd("READY=1")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        _notify_systemd("STOPPING=1")
        agent.stop()
    return 0


def _describe(agent: "Agent") -> str:
    """The ready line: what is served, where, and where telemetry and OTA go."""
    model, cfg = agent.model, agent.config
    assert model is not None
    parts = [f"serving {model.name} {model.version} ({model.variant.id}, {model.variant.runtime}) on {agent.endpoint}"]
    if agent.health_url:
        parts.append(f"health on {agent.health_url}")
    parts.append(
        f"telemetry to {cfg.telemetry.mqtt_url} every {cfg.telemetry.window_s:g}s"
        if agent.telemetry is not None
        else "telemetry off"
    )
    parts.append(
        f"OTA from {cfg.telemetry.mqtt_url}, store {cfg.model_store_dir}" if agent.ota is not None else "OTA off"
    )
    return "; ".join(parts)


def _status(args: argparse.Namespace) -> int:
    """Ask a running agent's /healthz (its health port) and print it."""
    import http.client
    import urllib.error
    import urllib.request

    url = args.url
    if url is None and args.config is None and args.http_port:  # no config needed to ask a known port
        url = f"http://127.0.0.1:{args.http_port}"
    if url is None:
        if args.config is None and args.http_port is None and not os.environ.get(f"{ENV_PREFIX}HEALTH_HTTP_PORT"):
            raise AgentError(
                "status asks a running agent's health server: give --config agent.toml (its health.http_port) "
                "or --url http://127.0.0.1:PORT"
            )
        config = _load_config(args)
        if not config.health.http_port:
            raise AgentError("status needs the agent's health server: set health.http_port in the config, or --url")
        url = f"http://{config.health.http_host}:{config.health.http_port}"
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=args.timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while starting still carries the body
        body = json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, OSError) as exc:
        raise AgentError(f"no agent answers at {url} ({getattr(exc, 'reason', exc)}); is it running?") from exc
    except (http.client.HTTPException, ValueError) as exc:  # something else listens there (a gRPC or MQTT port)
        body = {"not an HTTP JSON answer": type(exc).__name__}
    if not isinstance(body, dict) or "device_id" not in body or "breaker" not in body:  # e.g. the hub's /healthz
        raise AgentError(
            f"{url} does not answer as an agent's health server; give the agent's own health port "
            "(its config's [health] http_port, or --url)"
        )
    if args.json:
        print(json.dumps(body))
        return 0 if body.get("status") == "ok" else 1
    print(
        f"{body.get('status')}: device {body.get('device_id')} serves {body.get('model')} {body.get('version')} "
        f"({body.get('variant')}); hub {body.get('hub') or '-'}, breaker {body.get('breaker') or '-'}"
    )
    tel = body.get("telemetry")
    print(
        "telemetry: off"
        if not tel
        else f"telemetry: {tel['mqtt_url']} {'connected' if tel['connected'] else 'DISCONNECTED'}, outbox "
        f"{tel['outbox_depth']} windows waiting, last sequence {tel['last_sequence']}, "
        f"dropped {tel['outbox_dropped_total']}"
    )
    ota = body.get("ota")
    print(
        "ota: off"
        if not ota
        else f"ota: {ota['state']}, active {ota['active_version']}, previous {ota['previous_version'] or '-'}, "
        f"highest accepted {ota['max_accepted']}" + (" (on trial)" if ota["on_trial"] else "")
    )
    return 0 if body.get("status") == "ok" else 1


def _check(args: argparse.Namespace) -> int:
    from tandem.edge_agent.model import load_model

    from tandem.edge_agent.trust import TrustPolicy, check_model_dir

    config = _load_config(args)
    t = config.trust
    verdict = check_model_dir(
        config.model.dir,
        TrustPolicy.from_files(
            config.trusted_key_files,
            t.publisher_keys,
            require_publisher=t.require_publisher,
            allow_unsigned=t.allow_unsigned,
        ),
    )
    model = load_model(config.model.dir, config.model.profile, config.model.variant, threads=config.model.threads)
    try:
        info = {
            "model": model.name,
            "version": model.version,
            "variant": model.variant.id,
            "trust": verdict.as_dict(),
            "runtime": model.variant.runtime,
            "precision": model.variant.precision,
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": s.shape} for s in model.input_specs],
            "endpoint": config.server.endpoint,
            "hub_url": config.fallback.hub_url,
            "policy": config.policy.kind,
            "threshold": config.policy.threshold,
        }
    finally:
        model.close()
    hub = _check_hub(config, str(info["model"]), args)
    if hub is not None:
        info["hub"] = hub.as_dict()
        if hub.status == "not_found":  # every fallback would fail: a configuration error, not "ok"
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print(f"tandem-agent: {hub.detail}", file=sys.stderr)
            return 2
    print(
        json.dumps(info, indent=2)
        if args.json
        else f"ok: {info['model']} {info['version']} runs as {info['variant']} ({info['runtime']}) on profile "
        f"{config.model.profile}; serving on {config.server.endpoint}; "
        + (
            verdict.detail
            if verdict.trusted
            else f"{verdict.status.upper()} ({verdict.detail}), allowed by trust.allow_unsigned"
        )
        + _hub_line(hub)
    )
    return 0


def _check_hub(config: AgentConfig, model_name: str, args: argparse.Namespace) -> "HubProbe | None":
    """Does the fallback hub serve what this agent will ask it for? None: no hub configured, or --no-hub."""
    if config.fallback.hub_url is None or args.no_hub:
        return None
    from tandem.edge_agent.hub_probe import probe_hub_model

    return probe_hub_model(
        config.fallback.hub_url, config.fallback.hub_model or model_name, config.fallback_tls, args.hub_timeout
    )


def _hub_line(hub: "HubProbe | None") -> str:
    if hub is None:
        return ""
    if hub.status == "ok":
        return f"; fallback: {hub.detail}"
    return f"; WARNING: fallback hub at {hub.url} does not answer now ({hub.detail}): answers degrade until it does"


def _read_input(path: Path) -> dict[str, np.ndarray] | list[np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return [np.load(path, allow_pickle=False)]
    except (OSError, ValueError) as exc:
        raise AgentError(f"{path}: cannot read a .npy/.npz array ({exc})") from exc


def _infer(args: argparse.Namespace) -> int:
    from tandem.edge_agent.client import AgentClient

    inputs = _read_input(args.input)
    endpoint = args.endpoint or os.environ.get(ENV_PREFIX + "ENDPOINT")
    if endpoint is None:
        endpoint = AgentConfig.load(args.config).server.endpoint if args.config else default_endpoint()
    with AgentClient(endpoint, timeout_s=args.timeout) as client:
        answer = client.infer(inputs, threshold=args.threshold, mode=args.mode, return_outputs=args.outputs)
    if args.json:
        print(json.dumps(answer.to_dict()))
        return 0
    for i, (label, conf) in enumerate(zip(answer.labels, answer.confidence)):
        print(f"row {i}: label {label}  confidence {conf:.4f}")
    print(
        f"source {answer.source}  model {answer.model_name} {answer.model_version}  threshold {answer.threshold:.3f}"
        f"  {answer.latency_ms:.2f} ms in the agent" + (f"  ({answer.detail})" if answer.detail else "")
    )
    for name, value in answer.outputs.items():
        print(f"{name} {list(value.shape)}: {np.array2string(value, precision=4, threshold=50)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem-agent",
        description="Serve a compiled model on this device; fall back to the hub when unsure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tandem.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="agent.toml (optional when TANDEM_AGENT_* variables say enough)")
        p.add_argument("--model-dir", type=Path, help="compiled model directory (overrides the config)")
        p.add_argument("--endpoint", help="ipc://PATH or tcp://127.0.0.1:PORT (overrides the config)")
        p.add_argument("--http-port", type=int, help="health/metrics port, 0 for any (overrides the config)")

    run = sub.add_parser(
        "run",
        help="serve until SIGTERM/SIGINT",
        description="Load the model and serve the local API.",
        epilog="examples:\n  tandem-agent run --config agent.toml\n"
        "  tandem-agent run --model-dir out/digits-edge --endpoint tcp://127.0.0.1:5555 --http-port 9464\n\n"
        + config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_args(run)
    run.set_defaults(func=_run)

    check = sub.add_parser(
        "check",
        help="validate the config and load the model, then exit",
        description="Validate the configuration, verify the model files and open the runtime; with "
        "[fallback] hub_url, ask the hub whether it serves the model this agent will ask for (a hub that "
        "does not is a configuration error, exit 2).",
        epilog="examples:\n  tandem-agent check --config agent.toml\n"
        "  tandem-agent check --model-dir out/digits-edge --no-hub --json   # inputs' names, dtypes, shapes\n\n"
        + config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_args(check)
    check.add_argument("--json", action="store_true", help="print what would be served as JSON")
    check.add_argument(
        "--no-hub", action="store_true", help="do not ask the fallback hub whether it serves the model (offline)"
    )
    check.add_argument(
        "--hub-timeout", type=float, default=5.0, metavar="SECONDS", help="wait this long for the hub (default 5)"
    )
    check.set_defaults(func=_check)

    status = sub.add_parser(
        "status",
        help="show a running agent's model, OTA state and telemetry outbox",
        description="Read /healthz of a running agent (its health.http_port).",
        epilog="examples:\n  tandem-agent status --config agent.toml\n  tandem-agent status --url http://127.0.0.1:9464 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_args(status)
    status.add_argument("--url", help="health server URL, e.g. http://127.0.0.1:9464 (default: from the config)")
    status.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait (default 5)")
    status.add_argument("--json", action="store_true", help="print /healthz as JSON")
    status.set_defaults(func=_status)

    infer = sub.add_parser(
        "infer",
        help="send one request to a running agent",
        description="Send a .npy (one input, by position) or .npz (inputs by name) to the agent.",
        epilog="examples:\n  tandem-agent infer --config agent.toml --input x.npy\n"
        "  tandem-agent infer --input batch.npz --endpoint tcp://127.0.0.1:5555 --threshold 0.9 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infer.add_argument("--input", type=Path, required=True, help="x.npy or inputs.npz; the leading axis is rows")
    infer.add_argument(
        "--endpoint", help=f"agent endpoint (default: {ENV_PREFIX}ENDPOINT, else --config's, else {default_endpoint()})"
    )
    infer.add_argument("--config", type=Path, help="agent.toml: send to its server.endpoint")
    infer.add_argument("--threshold", type=float, help="override the confidence threshold for this request")
    infer.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "edge", "cloud"],
        help="auto (default): hub when unsure; edge: never the hub; cloud: always the hub",
    )
    infer.add_argument("--outputs", action="store_true", help="also print the output tensors")
    infer.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for the answer (default 5)")
    infer.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    infer.set_defaults(func=_infer)

    from tandem.edge_agent.init_cli import add_init_command

    add_init_command(sub)
    return add_log_level(parser, "warning")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args, "%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return args.func(args)
    except AgentError as exc:
        print(f"tandem-agent: {exc}", file=sys.stderr)
        return exit_code(exc)
    except ValueError as exc:
        print(f"tandem-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a --data-dir or --out that is a file, no permission, a full disk: one line
        logging.getLogger(__name__).debug("file error", exc_info=True)
        print(f"tandem-agent: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while infer, status or init wait (run stops on SIGINT by itself)
        print("tandem-agent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
