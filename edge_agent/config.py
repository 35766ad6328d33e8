"""The agent's configuration: one dataclass per TOML section, loaded by protocols/config_loader.py.

Sections: [model], [server], [policy], [batch], [fallback], [mode], [health], [hard_examples], [telemetry],
[ota], [trust], [streams]. Each key also reads from `TANDEM_AGENT_<SECTION>_<KEY>` (e.g. TANDEM_AGENT_FALLBACK_DEADLINE_MS=150,
or TANDEM_AGENT_SERVER_TAGS=site=lab,line=2 for a table), which wins over the file.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.streams import STREAM_IDLE_S, STREAMS_MAX
from tandem.protocols import config_loader
from tandem.protocols.otlp import TracingConfig

if TYPE_CHECKING:
    from tandem.edge_agent.modes import FallbackBudget
    from tandem.protocols.tls import TlsFiles

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "AgentConfig",
    "BatchConfig",
    "FallbackConfig",
    "HardExamplesConfig",
    "HealthConfig",
    "ModeConfig",
    "ModelConfig",
    "OtaConfig",
    "PolicyConfig",
    "ServerConfig",
    "StreamsConfig",
    "TelemetryConfig",
    "TrustConfig",
    "default_endpoint",
]

ENV_PREFIX = "TANDEM_AGENT_"
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")  # what the hub's device registry accepts
MAX_TAGS = 32
MAX_TAG_VALUE = 128


def default_endpoint() -> str:
    """ipc:// socket in the user's runtime dir ($XDG_RUNTIME_DIR, else the temp dir)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return f"ipc://{Path(base) / 'tandem-agent.sock'}"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tandem-agent"


@dataclass(frozen=True)
class ModelConfig:
    """[model]: what to serve."""

    dir: Path  # the directory tandem-compile wrote
    profile: str = "cpu-x86"
    variant: str | None = None  # a variant id that overrides the profile's choice
    allow_nan: bool = False
    threads: int | None = None  # runtime intra-op threads


@dataclass(frozen=True)
class ServerConfig:
    """[server]: the local API."""

    endpoint: str = field(default_factory=default_endpoint)
    device_id: str = field(default_factory=socket.gethostname)
    tags: dict[str, str] = field(default_factory=dict)  # cohort labels (site, line...) on telemetry windows
    spin_us: float = 300.0  # after a reply, poll this long for the next request before sleeping; 0: off
    fast_lane: bool = True  # answer repeated request layouts without re-checking them (fast_lane.py)


@dataclass(frozen=True)
class PolicyConfig:
    """[policy]: when the edge answer is not good enough."""

    kind: str = "max_prob"
    threshold: float | None = None  # None: the manifest's task.threshold, else the policy default
    output: str | None = None  # output to score; None: the first
    transform: str = "auto"  # auto|none|softmax|sigmoid


@dataclass(frozen=True)
class BatchConfig:
    """[batch]: the micro-batcher."""

    window_us: float = 300.0
    max_batch: int = 8
    max_queue: int = 256
    inline_max_us: float = 200.0  # faster models run on the I/O loop when idle; 0: always the worker
    solo_inline_max_us: float = 20_000.0  # models up to this run there too while clients come one at a time


@dataclass(frozen=True)
class FallbackConfig:
    """[fallback]: the hub over KServe v2 gRPC."""

    hub_url: str | None = None  # host:port of a KServe v2 gRPC server; None: edge only
    hub_model: str | None = None  # the model name to ask the hub for; None: the manifest's name
    deadline_ms: float = 200.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 5.0


@dataclass(frozen=True)
class ModeConfig:
    """[mode]: the serving mode and the fallback budget."""

    default: str = "hybrid"  # edge-only | cloud-only | hybrid | shadow (edge_agent/modes.py)
    shadow_sample_rate: float = 0.1  # shadow: share of requests also sent to the hub for agreement
    budget_rps: float | None = None  # fallback budget: hub calls per second; None: no limit
    budget_burst: float | None = None  # calls allowed at once; None: max(1, budget_rps)
    budget_bytes_per_hour: int | None = None  # request payload bytes sent to the hub per hour; None: no limit

    def fallback_budget(self, now: float = 0.0) -> FallbackBudget:
        """A fresh edge_agent.modes.FallbackBudget from these keys (unlimited when none is set)."""
        from tandem.edge_agent.modes import FallbackBudget

        return FallbackBudget(self.budget_rps, self.budget_burst, self.budget_bytes_per_hour, now=now)


@dataclass(frozen=True)
class HealthConfig:
    """[health]: /healthz and /metrics."""

    http_port: int | None = None  # None: no health server; 0: any free port
    http_host: str = "127.0.0.1"


@dataclass(frozen=True)
class HardExamplesConfig:
    """[hard_examples]: the local store of unsure requests (and the agent's state folder)."""

    data_dir: Path = field(default_factory=_default_data_dir)
    max: int = 1000


@dataclass(frozen=True)
class TelemetryConfig:
    """[telemetry]: the hub's broker and the windows streamed to it."""

    mqtt_url: str | None = None  # the hub's broker (mqtt://host:port); None: no telemetry, no OTA
    mqtt_tls_ca: Path | None = None  # mqtts://: the CA that signed the broker's certificate
    mqtt_tls_cert: Path | None = None  # this device's client certificate and key (tandem-hub pki issue DEVICE)
    mqtt_tls_key: Path | None = None
    enabled: bool = True  # with mqtt_url: stream telemetry windows
    window_s: float = 10.0
    max_requests: int = 10_000  # a busy device closes its window early
    outbox_max: int = 8640  # windows kept on disk while the broker is away; oldest dropped beyond
    input_every: int = 1  # summarize the inputs of every Nth request
    replay_s: float = 3600.0  # acknowledged windows kept this long for the hub's resend requests
    replay_bytes: int = 16 * 1024 * 1024  # ...and at most this many bytes of them (0: keep none)
    unstored_max: int = 1000  # closed windows held in memory while the outbox cannot be written

    @property
    def tls(self) -> TlsFiles | None:
        """protocols.tls.TlsFiles for the MQTT clients, or None for plain mqtt://."""
        if self.mqtt_tls_ca is None:
            return None
        from tandem.protocols.tls import TlsFiles

        return TlsFiles(self.mqtt_tls_ca, self.mqtt_tls_cert, self.mqtt_tls_key)


@dataclass(frozen=True)
class OtaConfig:
    """[ota]: signed model updates from the hub's rollouts."""

    enabled: bool = False  # accept signed model updates on /ota/cmd (needs mqtt_url, trusted_key)
    store_dir: Path | None = None  # A/B model slots; None: <data_dir>/models
    trusted_key: Path | None = None  # the hub's release public key PEM (tandem-hub keys release)
    hub_token: str | None = None  # bearer token (scope read) for manifests and artifacts
    watch_s: float = 60.0  # health watch after a switch, then commit or roll back
    min_requests: int = 20
    max_error_rate: float = 0.05
    max_fallback_rise: float = 0.15
    max_latency_ratio: float = 2.0
    commit_without_traffic: bool = True


@dataclass(frozen=True)
class TrustConfig:
    """[trust]: whose signatures make a model folder servable, OTA or placed by hand (edge_agent/trust.py)."""

    keys: tuple[Path, ...] = ()  # public key PEMs that may sign a served manifest (ota.trusted_key is added)
    publisher_keys: tuple[Path, ...] = ()  # with require_publisher: the publishers whose signature must be inside
    require_publisher: bool = False  # demand both signatures: the hub's release key and a trusted publisher
    allow_unsigned: bool = False  # DEVELOPMENT ONLY: serve unsigned/untrusted models with a WARNING


@dataclass(frozen=True)
class StreamsConfig:
    """[streams]: per-stream state of stateful models (edge_agent/streams.py): bounded, so a client
    opening streams without end cannot grow the agent's memory."""

    max: int = STREAMS_MAX  # streams kept at once; the least recently used is dropped beyond
    idle_s: float = STREAM_IDLE_S  # a stream unused this long starts again from zeros


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to start, by TOML section; `validate()` names the first bad key."""

    model: ModelConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    mode: ModeConfig = field(default_factory=ModeConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    hard_examples: HardExamplesConfig = field(default_factory=HardExamplesConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)  # [tracing] otlp_endpoint: export spans

    @property
    def telemetry_on(self) -> bool:
        return bool(self.telemetry.mqtt_url) and self.telemetry.enabled

    @property
    def fallback_tls(self) -> TlsFiles | None:
        """TlsFiles for the gRPC fallback: the same device identity as MQTT (telemetry.mqtt_tls_*, one
        `tandem-hub pki issue` folder), used whenever fallback.hub_url is set and mqtt_tls_ca is given (without
        mqtt_tls_cert the channel verifies the hub but presents no identity, which a Tandem hub refuses)."""
        if self.fallback.hub_url is None or self.telemetry.mqtt_tls_ca is None:
            return None
        return self.telemetry.tls

    @property
    def trusted_key_files(self) -> tuple[Path, ...]:
        """Keys a served manifest's outer signature may be by: trust.keys and the OTA release key."""
        extra = (self.ota.trusted_key,) if self.ota.trusted_key is not None else ()
        return tuple(self.trust.keys) + tuple(k for k in extra if k not in self.trust.keys)

    @property
    def model_store_dir(self) -> Path:
        return self.ota.store_dir if self.ota.store_dir is not None else self.hard_examples.data_dir / "models"

    def validate(self) -> AgentConfig:
        from tandem.edge_agent.policy import KINDS, TRANSFORMS

        m, p, b, f = self.model, self.policy, self.batch, self.fallback
        if not str(m.dir):
            raise _bad("model.dir", "required: the directory tandem-compile wrote")
        if not m.profile:
            raise _bad("model.profile", "required, e.g. cpu-x86")
        if m.threads is not None and m.threads < 1:
            raise _bad("model.threads", f"{m.threads} must be a positive integer")
        if p.kind not in KINDS:
            raise _bad("policy.kind", f"{p.kind!r} is not one of {', '.join(KINDS)}")
        if p.transform not in TRANSFORMS:
            raise _bad("policy.transform", f"{p.transform!r} is not one of {', '.join(TRANSFORMS)}")
        if p.threshold is not None and not 0.0 <= p.threshold <= 1.0:
            raise _bad("policy.threshold", f"{p.threshold} must be between 0 and 1")
        if not self.server.endpoint.startswith(("ipc://", "tcp://", "inproc://")):
            raise _bad("server.endpoint", f"{self.server.endpoint!r} must start with ipc://, tcp:// or inproc://")
        for key, value, low in (
            ("batch.window_us", b.window_us, 0),
            ("batch.inline_max_us", b.inline_max_us, 0),
            ("batch.solo_inline_max_us", b.solo_inline_max_us, 0),
            ("server.spin_us", self.server.spin_us, 0),
            ("fallback.deadline_ms", f.deadline_ms, 1),
            ("fallback.breaker_cooldown_s", f.breaker_cooldown_s, 0),
        ):
            if value < low:
                raise _bad(key, f"{value} must be >= {low}")
        _positive(
            ("batch.max_batch", b.max_batch),
            ("batch.max_queue", b.max_queue),
            ("fallback.breaker_failures", f.breaker_failures),
            ("hard_examples.max", self.hard_examples.max),
            ("streams.max", self.streams.max),
        )
        if not self.streams.idle_s > 0:
            raise _bad("streams.idle_s", f"{self.streams.idle_s} must be > 0 seconds")
        if self.health.http_port is not None and not 0 <= self.health.http_port <= 65535:
            raise _bad("health.http_port", f"{self.health.http_port} is not a TCP port")
        if f.hub_url is not None and not f.hub_url.strip():
            raise _bad("fallback.hub_url", "empty; leave it out for edge-only serving")
        self._validate_identity()
        self._validate_mode()
        self._validate_telemetry()
        self._validate_ota()
        return self

    def _validate_identity(self) -> None:
        from tandem.protocols.topics import TopicError, check_device_id

        try:
            check_device_id(self.server.device_id)
        except TopicError as exc:
            raise _bad("server.device_id", str(exc)) from None
        tags = self.server.tags
        if len(tags) > MAX_TAGS:
            raise _bad("server.tags", f"{len(tags)} tags; at most {MAX_TAGS}")
        for key, value in tags.items():
            if not TAG_KEY_RE.match(key):
                raise _bad("server.tags", f"key {key!r} may use letters, digits, '.', '_', '/' and '-' (max 64)")
            if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
                raise _bad("server.tags", f"{key}: value must be a string of at most {MAX_TAG_VALUE} characters")

    def _validate_mode(self) -> None:
        from tandem.edge_agent.modes import FallbackBudget, ServingMode

        mode = self.mode
        try:
            ServingMode.parse(mode.default)
        except ValueError as exc:
            raise _bad("mode.default", str(exc)) from None
        if not 0.0 <= mode.shadow_sample_rate <= 1.0:
            raise _bad("mode.shadow_sample_rate", f"{mode.shadow_sample_rate} must be a fraction between 0 and 1")
        if mode.budget_burst is not None and mode.budget_rps is None:
            raise _bad("mode.budget_burst", "needs budget_rps (the rate the burst refills at)")
        try:
            FallbackBudget(mode.budget_rps, mode.budget_burst, mode.budget_bytes_per_hour)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            raise _bad(f"mode.{key}", problem) from None

    def _validate_telemetry(self) -> None:
        t = self.telemetry
        if t.mqtt_url is not None:
            from tandem.protocols.topics import parse_mqtt_url

            try:
                parse_mqtt_url(t.mqtt_url)
            except ValueError as exc:
                raise _bad(
                    "telemetry.mqtt_url", f"{exc} (e.g. mqtt://hub.example.net:1883); leave it out for no broker"
                ) from None
        self._validate_tls()
        if t.window_s <= 0:
            raise _bad("telemetry.window_s", f"{t.window_s} must be > 0")
        _positive(
            ("telemetry.max_requests", t.max_requests),
            ("telemetry.outbox_max", t.outbox_max),
            ("telemetry.input_every", t.input_every),
            ("ota.min_requests", self.ota.min_requests),
            ("telemetry.unstored_max", t.unstored_max),
        )
        if t.replay_s < 0 or t.replay_bytes < 0:
            raise _bad(
                "telemetry.replay_s" if t.replay_s < 0 else "telemetry.replay_bytes",
                "must be >= 0 (0 keeps no acknowledged windows for the hub's resend requests)",
            )

    def _validate_tls(self) -> None:
        t = self.telemetry
        secure = (t.mqtt_url or "").lower().startswith("mqtts://")
        if secure and t.mqtt_tls_ca is None:
            raise _bad(
                "telemetry.mqtt_tls_ca",
                f"{t.mqtt_url} is mqtts://: give the broker's CA (and mqtt_tls_cert, mqtt_tls_key for mutual TLS)",
            )
        if t.mqtt_tls_ca is not None and t.mqtt_url and not secure:
            raise _bad("telemetry.mqtt_url", f"{t.mqtt_url}: TLS files are set, so use mqtts:// (no silent plain text)")
        if (t.mqtt_tls_cert is None) != (t.mqtt_tls_key is None):
            raise _bad("telemetry.mqtt_tls_cert", "give both mqtt_tls_cert and mqtt_tls_key, or neither")
        if t.mqtt_tls_cert is not None and t.mqtt_tls_ca is None:
            raise _bad(
                "telemetry.mqtt_tls_ca", "required with mqtt_tls_cert: the CA that signed the broker's certificate"
            )
        for key, path in (
            ("mqtt_tls_ca", t.mqtt_tls_ca),
            ("mqtt_tls_cert", t.mqtt_tls_cert),
            ("mqtt_tls_key", t.mqtt_tls_key),
        ):
            if path is not None and not path.is_file():
                raise _bad(
                    f"telemetry.{key}", f"{path} is not a readable file (tandem-hub pki issue {self.server.device_id})"
                )

    def _validate_ota(self) -> None:
        o = self.ota
        for key, value in (("ota.max_error_rate", o.max_error_rate), ("ota.max_fallback_rise", o.max_fallback_rise)):
            if not 0.0 <= value <= 1.0:
                raise _bad(key, f"{value} must be a fraction between 0 and 1")
        if o.max_latency_ratio <= 0:
            raise _bad("ota.max_latency_ratio", f"{o.max_latency_ratio} must be > 0")
        if o.watch_s < 0:
            raise _bad("ota.watch_s", f"{o.watch_s} must be >= 0")
        if not o.enabled:
            return
        if not self.telemetry.mqtt_url:
            raise _bad("ota.enabled", "OTA needs the hub's broker: set telemetry.mqtt_url")
        if o.trusted_key is None:
            raise _bad(
                "ota.trusted_key",
                "required with ota.enabled: the hub's release public key PEM (tandem-hub keys release > release.pem)",
            )
        if not o.trusted_key.is_file():
            raise _bad("ota.trusted_key", f"{o.trusted_key} is not a readable file")
        if o.hub_token is not None and not o.hub_token.strip():
            raise _bad("ota.hub_token", "empty; leave it out when the hub serves artifacts without a token")

    def with_overrides(self, changes: Mapping[str, Any]) -> AgentConfig:
        """A validated copy with dotted keys changed: `cfg.with_overrides({"server.endpoint": "tcp://..."})`."""
        return _loading(lambda: config_loader.override(self, changes)).validate()

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None, base_dir: Path | None = None
    ) -> AgentConfig:
        """Build from a TOML-shaped mapping plus `TANDEM_AGENT_<SECTION>_<KEY>` variables in `env` (None:
        os.environ, where unknown TANDEM_AGENT_* names are logged with the closest key)."""
        if env is None:
            env = os.environ
            config_loader.unknown_env(cls, env, ENV_PREFIX)
        return _loading(
            lambda: config_loader.build(cls, data, env=env, prefix=ENV_PREFIX, base_dir=base_dir)
        ).validate()

    @classmethod
    def from_keys(cls, keys: Mapping[str, Any]) -> AgentConfig:
        """Build from dotted keys without the environment (code and tests): {"model.dir": p, "policy.threshold": 0.5}."""
        return cls.from_mapping(config_loader.nest(keys), env={})

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
        """Read a TOML file (relative paths resolve against its folder); None: env vars only."""
        if path is None:
            return cls.from_mapping({}, env)
        path = Path(path)
        data = _loading(lambda: config_loader.read_toml(path))
        try:
            return cls.from_mapping(data, env, base_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


SECTIONS: dict[str, tuple[str, ...]] = config_loader.section_keys(AgentConfig)


def _bad(key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}")


def _positive(*pairs: tuple[str, int]) -> None:
    for key, value in pairs:
        if value < 1:
            raise _bad(key, f"{value} must be a positive integer")


def _loading(step: Callable[[], Any]) -> Any:
    """Run a loader step; its ConfigValueError becomes our ConfigError (the message names section.key)."""
    try:
        return step()
    except config_loader.ConfigValueError as exc:
        if exc.key in ("model", "model.dir") and str(exc).endswith("required"):  # no [model] at all, or no dir
            raise ConfigError(f"model.dir: required (or set {ENV_PREFIX}MODEL_DIR)") from None
        raise ConfigError(str(exc)) from None
