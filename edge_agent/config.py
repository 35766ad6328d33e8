"""The agent's configuration: one dataclass, loaded from TOML, overridable by env vars.

TOML may group keys in sections ([model], [server], [policy], [batch], [fallback],
[mode], [health], [hard_examples], [telemetry], [ota]) or list them at the top level; each key
also reads from `TANDEM_AGENT_<KEY>` (e.g. TANDEM_AGENT_DEADLINE_MS=150, or
TANDEM_AGENT_TAGS=site=lab,line=2 for a table), which wins over the file.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from tandem.edge_agent.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI (tandem[edge] pulls it in)
    import tomli as tomllib  # type: ignore[no-redef]

ENV_PREFIX = "TANDEM_AGENT_"
SECTIONS = {
    "model": ("model_dir", "profile", "variant", "allow_nan", "threads"),
    "server": ("endpoint", "device_id", "tags", "spin_us", "fast_lane"),
    "policy": ("policy", "threshold", "policy_output", "transform"),
    "batch": ("window_us", "max_batch", "max_queue", "inline_max_us", "solo_inline_max_us"),
    "fallback": ("hub_url", "hub_model", "deadline_ms", "breaker_failures", "breaker_cooldown_s"),
    "mode": ("mode", "shadow_sample_rate", "budget_rps", "budget_burst", "budget_bytes_per_hour"),
    "health": ("http_port", "http_host"),
    "hard_examples": ("data_dir", "hard_examples_max"),
    "telemetry": ("mqtt_url", "mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key", "telemetry_enabled",
                  "telemetry_window_s", "telemetry_max_requests", "telemetry_outbox_max", "telemetry_input_every"),
    "ota": ("ota_enabled", "ota_store_dir", "ota_trusted_key", "ota_hub_token", "ota_watch_s", "ota_min_requests",
            "ota_max_error_rate", "ota_max_fallback_rise", "ota_max_latency_ratio", "ota_commit_without_traffic"),
}
_SECTION_OF = {key: section for section, keys in SECTIONS.items() for key in keys}
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")  # what the hub's device registry accepts
MAX_TAGS = 32
MAX_TAG_VALUE = 128


def default_endpoint() -> str:
    """ipc:// socket in the user's runtime dir ($XDG_RUNTIME_DIR, else the temp dir)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return f"ipc://{Path(base) / 'tandem-agent.sock'}"


def _default_data_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "tandem-agent")


@dataclass
class AgentConfig:
    """Everything the agent needs to start; `validate()` names the first bad key."""

    model_dir: Path
    profile: str = "cpu-x86"
    variant: str | None = None          # a variant id that overrides the profile's choice
    allow_nan: bool = False
    threads: int | None = None          # runtime intra-op threads
    endpoint: str = field(default_factory=default_endpoint)
    device_id: str = field(default_factory=socket.gethostname)
    tags: dict[str, str] = field(default_factory=dict)  # cohort labels (site, line...) on telemetry windows
    spin_us: float = 300.0              # after a reply, poll this long for the next request before sleeping; 0: off
    fast_lane: bool = True              # answer repeated request layouts without re-checking them (fast_lane.py)
    policy: str = "max_prob"
    threshold: float | None = None      # None: the manifest's task.threshold, else the policy default
    policy_output: str | None = None    # output to score; None: the first
    transform: str = "auto"             # auto|none|softmax|sigmoid
    window_us: float = 300.0
    max_batch: int = 8
    max_queue: int = 256
    inline_max_us: float = 200.0        # faster models run on the I/O loop when idle; 0: always the worker
    solo_inline_max_us: float = 20_000.0  # models up to this run there too while clients come one at a time
    hub_url: str | None = None          # host:port of a KServe v2 gRPC server; None: edge only
    hub_model: str | None = None        # the model name to ask the hub for; None: the manifest's name
    deadline_ms: float = 200.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 5.0
    mode: str = "hybrid"                # edge-only | cloud-only | hybrid | shadow (edge_agent/modes.py)
    shadow_sample_rate: float = 0.1     # shadow: share of requests also sent to the hub for agreement
    budget_rps: float | None = None     # fallback budget: hub calls per second; None: no limit
    budget_burst: float | None = None   # calls allowed at once; None: max(1, budget_rps)
    budget_bytes_per_hour: int | None = None  # request payload bytes sent to the hub per hour; None: no limit
    http_port: int | None = None        # None: no health server; 0: any free port
    http_host: str = "127.0.0.1"
    data_dir: Path = field(default_factory=lambda: Path(_default_data_dir()))
    hard_examples_max: int = 1000
    mqtt_url: str | None = None         # the hub's broker (mqtt://host:port); None: no telemetry, no OTA
    mqtt_tls_ca: Path | None = None     # mqtts://: the CA that signed the broker's certificate
    mqtt_tls_cert: Path | None = None   # this device's client certificate and key (tandem-hub pki issue DEVICE)
    mqtt_tls_key: Path | None = None
    telemetry_enabled: bool = True      # with mqtt_url: stream telemetry windows
    telemetry_window_s: float = 10.0
    telemetry_max_requests: int = 10_000  # a busy device closes its window early
    telemetry_outbox_max: int = 8640    # windows kept on disk while the broker is away; oldest dropped beyond
    telemetry_input_every: int = 1      # summarize the inputs of every Nth request
    ota_enabled: bool = False           # accept signed model updates on /ota/cmd (needs mqtt_url, ota_trusted_key)
    ota_store_dir: Path | None = None   # A/B model slots; None: <data_dir>/models
    ota_trusted_key: Path | None = None  # the hub's release public key PEM (tandem-hub keys release)
    ota_hub_token: str | None = None    # bearer token (scope read) for manifests and artifacts
    ota_watch_s: float = 60.0           # health watch after a switch, then commit or roll back
    ota_min_requests: int = 20
    ota_max_error_rate: float = 0.05
    ota_max_fallback_rise: float = 0.15
    ota_max_latency_ratio: float = 2.0
    ota_commit_without_traffic: bool = True

    @property
    def telemetry_on(self) -> bool:
        return bool(self.mqtt_url) and self.telemetry_enabled

    @property
    def mqtt_tls(self) -> Any:
        """protocols.tls.TlsFiles for the MQTT clients, or None for plain mqtt://."""
        if self.mqtt_tls_ca is None:
            return None
        from tandem.protocols.tls import TlsFiles

        return TlsFiles(self.mqtt_tls_ca, self.mqtt_tls_cert, self.mqtt_tls_key)

    @property
    def fallback_tls(self) -> Any:
        """TlsFiles for the gRPC fallback: the same device identity as MQTT (mqtt_tls_ca/cert/key, one
        `tandem-hub pki issue` folder), used whenever hub_url is set and mqtt_tls_ca is given (without
        mqtt_tls_cert the channel verifies the hub but presents no identity, which a Tandem hub refuses)."""
        if self.hub_url is None or self.mqtt_tls_ca is None:
            return None
        return self.mqtt_tls

    @property
    def model_store_dir(self) -> Path:
        return self.ota_store_dir if self.ota_store_dir is not None else self.data_dir / "models"

    def validate(self) -> "AgentConfig":
        from tandem.edge_agent.policy import KINDS, TRANSFORMS

        def bad(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{_where(key)}: {problem}")

        if not str(self.model_dir):
            raise bad("model_dir", "required: the directory tandem-compile wrote")
        if not self.profile:
            raise bad("profile", "required, e.g. cpu-x86")
        if self.policy not in KINDS:
            raise bad("policy", f"{self.policy!r} is not one of {', '.join(KINDS)}")
        if self.transform not in TRANSFORMS:
            raise bad("transform", f"{self.transform!r} is not one of {', '.join(TRANSFORMS)}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise bad("threshold", f"{self.threshold} must be between 0 and 1")
        if not self.endpoint.startswith(("ipc://", "tcp://", "inproc://")):
            raise bad("endpoint", f"{self.endpoint!r} must start with ipc://, tcp:// or inproc://")
        for key, low in (("window_us", 0), ("inline_max_us", 0), ("solo_inline_max_us", 0), ("spin_us", 0), ("deadline_ms", 1), ("breaker_cooldown_s", 0)):
            if getattr(self, key) < low:
                raise bad(key, f"{getattr(self, key)} must be >= {low}")
        for key in ("max_batch", "max_queue", "breaker_failures", "hard_examples_max"):
            if getattr(self, key) < 1:
                raise bad(key, f"{getattr(self, key)} must be a positive integer")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", f"{self.threads} must be a positive integer")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise bad("http_port", f"{self.http_port} is not a TCP port")
        if self.hub_url is not None and not self.hub_url.strip():
            raise bad("hub_url", "empty; leave it out for edge-only serving")
        self._validate_identity(bad)
        self._validate_mode(bad)
        self._validate_telemetry(bad)
        self._validate_ota(bad)
        return self

    def _validate_identity(self, bad: Any) -> None:
        from tandem.protocols.topics import TopicError, check_device_id

        try:
            check_device_id(self.device_id)
        except TopicError as exc:
            raise bad("device_id", str(exc)) from None
        if len(self.tags) > MAX_TAGS:
            raise bad("tags", f"{len(self.tags)} tags; at most {MAX_TAGS}")
        for key, value in self.tags.items():
            if not TAG_KEY_RE.match(key):
                raise bad("tags", f"key {key!r} may use letters, digits, '.', '_', '/' and '-' (max 64)")
            if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
                raise bad("tags", f"{key}: value must be a string of at most {MAX_TAG_VALUE} characters")

    def _validate_mode(self, bad: Any) -> None:
        from tandem.edge_agent.modes import FallbackBudget, ServingMode

        try:
            ServingMode.parse(self.mode)
        except ValueError as exc:
            raise bad("mode", str(exc)) from None
        if not 0.0 <= self.shadow_sample_rate <= 1.0:
            raise bad("shadow_sample_rate", f"{self.shadow_sample_rate} must be a fraction between 0 and 1")
        if self.budget_burst is not None and self.budget_rps is None:
            raise bad("budget_burst", "needs budget_rps (the rate the burst refills at)")
        try:
            FallbackBudget(self.budget_rps, self.budget_burst, self.budget_bytes_per_hour)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            raise bad(key, problem) from None

    def fallback_budget(self, now: float = 0.0) -> Any:
        """A fresh edge_agent.modes.FallbackBudget from the [mode] keys (unlimited when none is set)."""
        from tandem.edge_agent.modes import FallbackBudget

        return FallbackBudget(self.budget_rps, self.budget_burst, self.budget_bytes_per_hour, now=now)

    def _validate_telemetry(self, bad: Any) -> None:
        if self.mqtt_url is not None:
            from tandem.protocols.topics import parse_mqtt_url

            try:
                parse_mqtt_url(self.mqtt_url)
            except ValueError as exc:
                raise bad("mqtt_url", f"{exc} (e.g. mqtt://hub.example.net:1883); leave it out for no broker") from None
        self._validate_tls(bad)
        if self.telemetry_window_s <= 0:
            raise bad("telemetry_window_s", f"{self.telemetry_window_s} must be > 0")
        for key in ("telemetry_max_requests", "telemetry_outbox_max", "telemetry_input_every", "ota_min_requests"):
            if getattr(self, key) < 1:
                raise bad(key, f"{getattr(self, key)} must be a positive integer")

    def _validate_tls(self, bad: Any) -> None:
        secure = (self.mqtt_url or "").lower().startswith("mqtts://")
        if secure and self.mqtt_tls_ca is None:
            raise bad("mqtt_tls_ca", f"{self.mqtt_url} is mqtts://: give the broker's CA (and mqtt_tls_cert, "
                                     "mqtt_tls_key for mutual TLS)")
        if self.mqtt_tls_ca is not None and self.mqtt_url and not secure:
            raise bad("mqtt_url", f"{self.mqtt_url}: TLS files are set, so use mqtts:// (no silent plain text)")
        if (self.mqtt_tls_cert is None) != (self.mqtt_tls_key is None):
            raise bad("mqtt_tls_cert", "give both mqtt_tls_cert and mqtt_tls_key, or neither")
        if self.mqtt_tls_cert is not None and self.mqtt_tls_ca is None:
            raise bad("mqtt_tls_ca", "required with mqtt_tls_cert: the CA that signed the broker's certificate")
        for key in ("mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise bad(key, f"{path} is not a readable file (tandem-hub pki issue {self.device_id})")

    def _validate_ota(self, bad: Any) -> None:
        for key in ("ota_max_error_rate", "ota_max_fallback_rise"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, f"{getattr(self, key)} must be a fraction between 0 and 1")
        if self.ota_max_latency_ratio <= 0:
            raise bad("ota_max_latency_ratio", f"{self.ota_max_latency_ratio} must be > 0")
        if self.ota_watch_s < 0:
            raise bad("ota_watch_s", f"{self.ota_watch_s} must be >= 0")
        if not self.ota_enabled:
            return
        if not self.mqtt_url:
            raise bad("ota_enabled", "OTA needs the hub's broker: set telemetry.mqtt_url")
        if self.ota_trusted_key is None:
            raise bad("ota_trusted_key", "required with ota_enabled: the hub's release public key PEM "
                                         "(tandem-hub keys release > release.pem)")
        if not self.ota_trusted_key.is_file():
            raise bad("ota_trusted_key", f"{self.ota_trusted_key} is not a readable file")
        if self.ota_hub_token is not None and not self.ota_hub_token.strip():
            raise bad("ota_hub_token", "empty; leave it out when the hub serves artifacts without a token")

    def with_overrides(self, **changes: Any) -> "AgentConfig":
        return replace(self, **changes).validate()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None,
                     base_dir: Path | None = None) -> "AgentConfig":
        """Build from a TOML-shaped mapping plus `TANDEM_AGENT_*` variables in `env`."""
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTIONS and isinstance(value, Mapping):
                for sub, subvalue in value.items():
                    if sub not in SECTIONS[key]:
                        raise ConfigError(f"{key}.{sub}: unknown key (keys of [{key}]: {', '.join(SECTIONS[key])})")
                    flat[sub] = subvalue
            elif key in _SECTION_OF:
                flat[key] = value
            else:
                raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(_SECTION_OF))})")
        types = {f.name: f.type for f in fields(cls)}
        values = {key: _coerce(key, types[key], value, from_env=False) for key, value in flat.items()}
        for key in _SECTION_OF:
            raw = (os.environ if env is None else env).get(ENV_PREFIX + key.upper())
            if raw is not None:
                values[key] = _coerce(key, types[key], raw, from_env=True)
        if "model_dir" not in values:
            raise ConfigError(f"model.model_dir: required (or set {ENV_PREFIX}MODEL_DIR)")
        for key in ("model_dir", "data_dir", "ota_store_dir", "ota_trusted_key", "mqtt_tls_ca", "mqtt_tls_cert",
                    "mqtt_tls_key"):
            if values.get(key) is not None and base_dir is not None and not Path(values[key]).is_absolute():
                values[key] = base_dir / values[key]
        return cls(**values).validate()

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> "AgentConfig":
        """Read a TOML file (relative paths resolve against its folder); None: env vars only."""
        if path is None:
            return cls.from_mapping({}, env)
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        try:
            return cls.from_mapping(data, env, base_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def _where(key: str) -> str:
    return f"{_SECTION_OF.get(key, '')}.{key}".lstrip(".")


def _coerce(key: str, type_name: Any, value: Any, *, from_env: bool) -> Any:
    """Convert `value` to the field's type; the error names the key and where it came from."""
    t = str(type_name)
    origin = f" (from {ENV_PREFIX}{key.upper()})" if from_env else ""
    optional = "None" in t
    if optional and (value is None or (from_env and value.strip().lower() in ("", "none", "null"))):
        return None
    try:
        if t.startswith("dict"):
            return _coerce_table(value, from_env)
        if "Path" in t:
            if not isinstance(value, (str, Path)):
                raise TypeError
            return Path(value)
        if t.startswith("bool"):
            if isinstance(value, bool):
                return value
            if from_env and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.strip().lower() in ("1", "true", "yes", "on")
            raise TypeError
        if t.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if t.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        kind = "a table of strings (k=v,k2=v2 in env)" if t.startswith("dict") else t.split(" ")[0].split("|")[0]
        raise ConfigError(f"{_where(key)}{origin}: expected {kind}, got {value!r}") from None


def _coerce_table(value: Any, from_env: bool) -> dict[str, str]:
    """A TOML table of strings, or `k=v,k2=v2` from the environment."""
    if from_env and isinstance(value, str):
        items = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(kv) != 2 for kv in items):
            raise ValueError
        return {k.strip(): v.strip() for k, v in items}
    if not isinstance(value, Mapping) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                 for v in value.values()):
        raise TypeError
    return {str(k): str(v) for k, v in value.items()}
