"""`tandem-agent init`: a device joins a hub and gets a working agent.toml in one command.

The hub says where its gRPC and MQTT endpoints are and which key signs its releases (GET /v1/hub,
GET /v1/keys/release); the device is registered (POST /v1/devices) and, when the caller's token
may, given a token of its own (scope `device`), so the written config serves, falls back,
streams telemetry and takes OTA updates without root and without a value typed by hand.
Stdlib HTTP only: a device installs the agent alone (no cloud_hub import).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tandem
from tandem.edge_agent.errors import ConfigError
from tandem.protocols.http_errors import describe_connection_error, describe_refusal

__all__ = ["HubLink", "InitError", "InitRequest", "JoinResult", "choose_health_port", "join", "render_config"]

DEFAULT_HEALTH_PORT = 9464
MAX_IPC_PATH = 100  # sun_path holds 108 bytes on Linux; leave room for ZeroMQ's own suffixes
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


class InitError(ConfigError):
    """The hub could not be asked, or refused the device: the message says which request and why."""


@dataclass(frozen=True)
class InitRequest:
    """What `tandem-agent init` was told; paths are made absolute before they are written."""

    hub: str  # the hub's REST URL, e.g. http://127.0.0.1:8080
    token: str  # an operate (or admin) token: it registers the device
    out: Path  # the agent.toml to write
    model_dir: Path
    device_id: str = field(default_factory=socket.gethostname)
    profile: str = "cpu-x86"
    data_dir: Path | None = None  # default: <out's folder>/<device_id>-data
    tags: dict[str, str] = field(default_factory=dict)
    trust_keys: tuple[Path, ...] = ()  # extra keys whose signatures make a folder servable (e.g. the publisher's)
    tls_dir: Path | None = None  # `tandem-hub pki issue DEVICE` folder: ca.crt, client.crt, client.key
    ca: Path | None = None  # verifies an https:// hub (default: tls_dir/ca.crt)
    http_port: int | None = None  # the agent's health port (default: 9464 when free, else a free one)
    force: bool = False


@dataclass(frozen=True)
class JoinResult:
    """What was written and learned, for the CLI's summary."""

    config_path: Path
    release_key_path: Path
    device_token: str  # "device" when a device token was made, else the caller's scope
    grpc_url: str | None
    mqtt_url: str | None


class HubLink:
    """The few REST calls a joining device makes, with urllib (TLS verified against `ca` when given)."""

    def __init__(self, url: str, token: str, ca: Path | None = None, timeout_s: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InitError(f"--hub {url!r}: give the hub's REST URL, e.g. http://127.0.0.1:8080")
        if not token.strip():
            raise InitError("--token is empty: tandem-hub tokens create --scope admin --name ops")
        self.url = url.rstrip("/")
        self.host = parsed.hostname
        self._token = token.strip()
        self._timeout = timeout_s
        self._context: ssl.SSLContext | None = None
        self._ca = ca
        if parsed.scheme == "https":
            if ca is not None and not ca.is_file():
                raise InitError(f"--ca {ca}: not a readable file (the pki folder's ca.crt)")
            self._context = ssl.create_default_context(cafile=str(ca) if ca else None)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self._timeout, context=self._context) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code in (401, 403):
                raise InitError(describe_refusal(self.url, method, path, exc.code, detail, token_given=True)) from None
            raise InitError(f"{method} {self.url}{path}: HTTP {exc.code} {detail}") from None
        except urllib.error.URLError as exc:
            cause = exc.reason if isinstance(exc.reason, BaseException) else exc
            raise InitError(describe_connection_error(self.url, cause, self._ca, url_option="--hub")) from None
        except (http.client.HTTPException, TimeoutError) as exc:  # something that is not the hub's HTTP answers
            what = f"no answer within {self._timeout:g} s" if isinstance(exc, TimeoutError) else "not an HTTP answer"
            raise InitError(
                f"{method} {self.url}{path}: {what}; is {self.url} the hub's REST URL (`tandem-hub serve` prints it), "
                "not its gRPC or MQTT port?"
            ) from None
        except (OSError, ValueError) as exc:
            raise InitError(f"{method} {self.url}{path}: {exc}") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return exc.reason or ""
    return str(body.get("detail") or body.get("error") or body) if isinstance(body, dict) else str(body)


def choose_health_port(host: str = "127.0.0.1", preferred: int = DEFAULT_HEALTH_PORT) -> int:
    """`preferred` when nothing listens on it now, else a free port; written once into the config,
    so a second agent initialised on the same host gets a port of its own."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise InitError(f"no free TCP port on {host} for the agent's health server")


def agent_endpoint(data_dir: Path, device_id: str) -> str:
    """ipc:// in the agent's own data dir (one socket per agent), or the runtime dir when that path is too long."""
    path = data_dir / "agent.sock"
    if len(str(path)) > MAX_IPC_PATH:
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        path = Path(base) / f"tandem-agent-{device_id}.sock"
    return f"ipc://{path}"


def _reachable(url: str | None, hub_host: str) -> str | None:
    """A hub that listens on 0.0.0.0 is reached by the host name the device used for REST."""
    if not url:
        return url
    scheme, sep, rest = url.rpartition("://")
    host, _, port = rest.rpartition(":")
    if host in WILDCARD_HOSTS:
        host = f"[{hub_host}]" if ":" in hub_host else hub_host
        return f"{scheme}{sep}{host}:{port}"
    return url


def _toml_str(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_config(
    req: InitRequest,
    *,
    data_dir: Path,
    http_port: int,
    grpc_url: str | None,
    mqtt_url: str | None,
    release_key: Path,
    hub_token: str,
) -> str:
    """The agent.toml text: every path absolute, every endpoint this agent's own."""
    tls = req.tls_dir.resolve() if req.tls_dir is not None else None
    trust = [release_key.resolve(), *(k.expanduser().resolve() for k in req.trust_keys)]
    tags = ", ".join(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in sorted(req.tags.items()))
    lines = [
        f"# Written by `tandem-agent init` for device {req.device_id} from the hub {req.hub}.",
        "# Check it: tandem-agent check --config THIS; serve: tandem-agent run --config THIS.",
        "",
        "[model]",
        f"dir = {_toml_str(req.model_dir.resolve())}",
        f"profile = {_toml_str(req.profile)}",
        "",
        "[server]",
        f"device_id = {_toml_str(req.device_id)}",
        f"endpoint = {_toml_str(agent_endpoint(data_dir, req.device_id))}",
        f"tags = {{ {tags} }}" if tags else "tags = {}",
        "",
        "[health]",
        'http_host = "127.0.0.1"',
        f"http_port = {http_port}",
        "",
        "[hard_examples]",
        f"data_dir = {_toml_str(data_dir)}",
        "",
    ]
    if grpc_url:
        lines += ["[fallback]", f"hub_url = {_toml_str(grpc_url)}", ""]
    if mqtt_url:
        lines += ["[telemetry]", f"mqtt_url = {_toml_str(mqtt_url)}"]
        if tls is not None:
            lines += [
                f"mqtt_tls_ca = {_toml_str(tls / 'ca.crt')}",
                f"mqtt_tls_cert = {_toml_str(tls / 'client.crt')}",
                f"mqtt_tls_key = {_toml_str(tls / 'client.key')}",
            ]
        lines += [
            "",
            "[ota]",
            "enabled = true",
            f"trusted_key = {_toml_str(release_key.resolve())}",
            f"hub_token = {_toml_str(hub_token)}",
            "",
        ]
    lines += ["[trust]", "keys = [" + ", ".join(_toml_str(k) for k in trust) + "]", ""]
    return "\n".join(lines)


def _check_request(req: InitRequest) -> None:
    from tandem.protocols.topics import TopicError, check_device_id

    try:
        check_device_id(req.device_id)
    except TopicError as exc:
        raise InitError(f"--device-id: {exc}") from None
    if not (req.model_dir / "manifest.json").is_file():
        raise InitError(f"--model-dir {req.model_dir}: no manifest.json there (the folder tandem-compile wrote)")
    for key in req.trust_keys:
        if not key.expanduser().is_file():
            raise InitError(f"--trust-key {key}: not a readable file (a public key PEM)")
    if req.tls_dir is not None:
        for name in ("ca.crt", "client.crt", "client.key"):
            if not (req.tls_dir / name).is_file():
                raise InitError(f"--tls-dir {req.tls_dir}: no {name} (tandem-hub pki issue {req.device_id})")
    if req.out.exists() and not req.force:
        raise InitError(f"--out {req.out} exists; pass --force to replace it")


def _manifest_name_version(model_dir: Path) -> tuple[str | None, str | None]:
    try:
        doc = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise InitError(f"--model-dir {model_dir}: cannot read manifest.json ({exc})") from None
    return doc.get("name"), doc.get("version")


def join(req: InitRequest) -> JoinResult:
    """Ask the hub, register the device, write the release key and the config (0600: it holds a token)."""
    _check_request(req)
    ca = req.ca if req.ca is not None else (req.tls_dir / "ca.crt" if req.tls_dir is not None else None)
    link = HubLink(req.hub, req.token, ca)
    who = link.call("GET", "/v1/auth/whoami")
    info = link.call("GET", "/v1/hub")
    key = link.call("GET", "/v1/keys/release")
    name, version = _manifest_name_version(req.model_dir)
    link.call(
        "POST",
        "/v1/devices",
        {
            "device_id": req.device_id,
            "profile": req.profile,
            "agent_version": tandem.__version__,
            "tags": req.tags,
            "model_name": name,
            "model_version": version,
        },
    )
    if "admin" in who.get("allows", ()):
        made = link.call(
            "POST", "/v1/tokens", {"name": f"agent {req.device_id}", "scope": "device", "device_id": req.device_id}
        )
        hub_token, token_kind = made["token"], "device"
    else:
        hub_token, token_kind = req.token, str(who.get("scope"))
    out = req.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    data_dir = (req.data_dir or out.parent / f"{req.device_id}-data").resolve()
    release_key = out.parent / f"{out.stem}.release.pub.pem"
    release_key.write_text(key["public_key_pem"])
    text = render_config(
        req,
        data_dir=data_dir,
        http_port=req.http_port if req.http_port is not None else choose_health_port(),
        grpc_url=_reachable(info.get("grpc_url"), link.host),
        mqtt_url=_reachable(info.get("mqtt_url"), link.host),
        release_key=release_key,
        hub_token=hub_token,
    )
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(out, 0o600)
    from tandem.edge_agent.config import AgentConfig

    try:
        AgentConfig.load(out, env={})  # what was written must load: a broken file is our bug, said at once
    except ConfigError as exc:
        raise InitError(f"the written config does not load: {exc}") from exc
    return JoinResult(out, release_key, token_kind, info.get("grpc_url"), info.get("mqtt_url"))
