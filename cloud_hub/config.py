"""The hub's configuration: one dataclass per TOML section, loaded by protocols/config_loader.py (as the agent's).

Sections: [http], [grpc], [mqtt], [storage], [models], [publishers], [devices], [telemetry], [drift], [rollouts],
[hard_examples], [tracing], [cluster]; `data_dir` and `tls_dir` sit at the top. Each key also reads from `TANDEM_HUB_<SECTION>_<KEY>`
(TANDEM_HUB_HTTP_PORT, TANDEM_HUB_DRIFT_OPEN_ABOVE; TANDEM_HUB_DATA_DIR at the top), which wins over the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tandem.cloud_hub.errors import ConfigError
from tandem.protocols import config_loader
from tandem.protocols.otlp import TracingConfig

__all__ = [
    "BROKER_KINDS",
    "ClusterConfig",
    "ENV_PREFIX",
    "REST_CLIENT_CERTS",
    "SECTIONS",
    "DevicesConfig",
    "DriftConfig",
    "GrpcConfig",
    "HardExamplesConfig",
    "HttpConfig",
    "HubConfig",
    "ModelsConfig",
    "MqttConfig",
    "PublishersConfig",
    "RolloutsConfig",
    "StorageConfig",
    "TelemetryConfig",
]

ENV_PREFIX = "TANDEM_HUB_"
CLIENT_ENV = ("TANDEM_HUB_URL", "TANDEM_HUB_TOKEN", "TANDEM_HUB_CA")  # read by cloud_hub/client.py, not settings
BROKER_KINDS = ("auto", "mosquitto", "embedded")
REST_CLIENT_CERTS = ("none", "optional", "required")
GRPC_SERVERS = ("aio", "threads")  # as cloud_hub.inference.server.SERVER_KINDS (not imported: gRPC stays optional)
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _bad(key: str, problem: str) -> ConfigError:
    """An error naming the dotted key and its variable: `http.port (env TANDEM_HUB_HTTP_PORT): ...`."""
    return ConfigError(f"{key} (env {config_loader.env_name(ENV_PREFIX, key)}): {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and (not _number(value) or value <= 0):
            raise _bad(f"{section}.{name}", f"{value!r} must be a positive number")


def _port(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise _bad(key, f"{value!r} is not a port 0-65535")


def _http_url(key: str, value: Any) -> None:
    if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
        raise _bad(key, f"{value!r} should look like http://host:8080")


def _switch(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(key, f"{value!r} is not true or false")


@dataclass(frozen=True)
class HttpConfig:
    """[http]: the REST console, web page and artifact server; port 0 picks a free port."""

    host: str = "127.0.0.1"
    port: int = 8080
    # The hub's HTTP base URL as devices reach it (OTA manifests and artifacts); None: the URL it listens on.
    public_url: str | None = None
    # With tls_dir, HTTPS with the hub's server certificate; client certificates there: "none" (bearer tokens
    # only, browsers), "optional" (asked for, checked against the fleet CA if sent), "required".
    client_certs: str = "none"
    # Per-token token bucket (429 + Retry-After beyond it); /healthz is exempt.
    rate_per_s: float = 20.0
    burst: float = 60.0
    # JSON request bodies larger than this are refused with 413 before they are read; uploads have max_upload_mb.
    max_json_body_bytes: int = 1024 * 1024
    max_upload_mb: float = 2048.0

    def __post_init__(self) -> None:
        _port("http.port", self.port)
        _http_url("http.public_url", self.public_url)
        if self.client_certs not in REST_CLIENT_CERTS:
            raise _bad("http.client_certs", f"{self.client_certs!r} is not one of {', '.join(REST_CLIENT_CERTS)}")
        if not _number(self.burst) or self.burst < 1:
            raise _bad("http.burst", f"{self.burst!r} must be a number >= 1")
        _positive("http", self, "rate_per_s", "max_json_body_bytes", "max_upload_mb")


@dataclass(frozen=True)
class GrpcConfig:
    """[grpc]: the v2 inference server (runs when models.dirs is set)."""

    host: str = "127.0.0.1"
    port: int = 8001
    # "threads": grpc.server with a pool of `workers`; "aio": grpc.aio on one event loop (measured slower here).
    server: str = "threads"
    # ModelInfer calls held at once (apart from any thread pool); past it RESOURCE_EXHAUSTED + retry pushback.
    max_concurrent_rpcs: int = 256
    workers: int = 16  # the "threads" server's pool: 2 x max_batch (a batch runs while the next forms)
    inline_max_us: float = 200.0  # models measured faster run on the server's own thread (0: never)
    # OpenVINO variants: batches on asynchronous infer requests compiled for throughput; streams 0: OpenVINO's choice
    openvino_async: bool = True
    openvino_streams: int = 0

    def __post_init__(self) -> None:
        _port("grpc.port", self.port)
        if self.server not in GRPC_SERVERS:
            raise _bad("grpc.server", f"{self.server!r} is not one of {', '.join(GRPC_SERVERS)}")
        for key, least in (("max_concurrent_rpcs", 1), ("workers", 1), ("openvino_streams", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise _bad(f"grpc.{key}", f"{value!r} must be a whole number >= {least}")
        if not _number(self.inline_max_us) or self.inline_max_us < 0:
            raise _bad("grpc.inline_max_us", f"{self.inline_max_us!r} must be a number >= 0")
        _switch("grpc.openvino_async", self.openvino_async)


@dataclass(frozen=True)
class MqttConfig:
    """[mqtt]: the fleet's broker, started by the hub or external."""

    # None: start a broker for the fleet (see `broker`); otherwise an external mqtt://host:port.
    url: str | None = None
    broker: str = "auto"  # which broker the hub starts: auto (Mosquitto when installed), mosquitto, embedded
    host: str = "127.0.0.1"
    port: int = 0  # 0: a port kept stable per data dir

    def __post_init__(self) -> None:
        _port("mqtt.port", self.port)
        if self.broker not in BROKER_KINDS:
            raise _bad("mqtt.broker", f"{self.broker!r} is not one of {', '.join(BROKER_KINDS)}")
        if self.url is not None and not self.url.startswith(("mqtt://", "mqtts://", "tcp://")):
            raise _bad("mqtt.url", f"{self.url!r} should look like mqtt://host:1883")


@dataclass(frozen=True)
class StorageConfig:
    """[storage]: where the hub's state lives (docs/storage.md). None: SQLite files in data_dir (the default);
    postgresql://user:password@host:5432/dbname: one PostgreSQL database, a schema per store (several replicas)."""

    database_url: str | None = None

    def __repr__(self) -> str:
        from tandem.cloud_hub.storage.db import redact_url

        return f"StorageConfig(database_url={redact_url(self.database_url) if self.database_url else None!r})"

    def __post_init__(self) -> None:
        url = self.database_url
        if url is not None and not (isinstance(url, str) and url.startswith(("postgresql://", "postgres://"))):
            from tandem.cloud_hub.storage.db import redact_url

            shown = redact_url(url) if isinstance(url, str) else repr(url)
            raise _bad(
                "storage.database_url",
                f"{shown!r} should look like postgresql://user:password@host:5432/tandem (leave it unset for SQLite)",
            )


@dataclass(frozen=True)
class ModelsConfig:
    """[models]: what the hub's gRPC server serves."""

    dirs: tuple[Path, ...] = ()
    # "asked=served" pairs: a request for model `asked` is answered by model `served` (e.g. digits-edge=digits-cloud,
    # so an agent's fallback naming its own model reaches the cloud pair). `--alias` on `tandem-hub serve`.
    aliases: tuple[str, ...] = ()
    # The hardware profile whose chosen variant the hub's gRPC server runs (gpu-cuda on a GPU host).
    inference_profile: str = "cpu-x86"
    profile_dirs: tuple[Path, ...] = ()  # extra hardware profile folders

    def __post_init__(self) -> None:
        object.__setattr__(self, "dirs", tuple(Path(p) for p in self.dirs))
        object.__setattr__(self, "profile_dirs", tuple(Path(p) for p in self.profile_dirs))
        object.__setattr__(self, "aliases", tuple(str(a) for a in self.aliases))
        self.alias_map()  # refuses a malformed pair at start-up

    def alias_map(self) -> dict[str, str]:
        """aliases as {asked: served}; ConfigError naming a pair that is not NAME=NAME."""
        out: dict[str, str] = {}
        for pair in self.aliases:
            asked, sep, served = (part.strip() for part in pair.partition("="))
            if not sep or not asked or not served or asked == served:
                raise _bad(
                    "models.aliases",
                    f"{pair!r} is not ASKED=SERVED with two different model names, e.g. digits-edge=digits-cloud "
                    "(--alias)",
                )
            out[asked] = served
        return out


@dataclass(frozen=True)
class PublishersConfig:
    """[publishers]: who may sign what `tandem-compile` produced (tandem-hub publishers)."""

    # DEV ONLY: register uploads signed by an unknown publisher key and trust that key from then on (logged at
    # WARNING each time). Off: only keys added with `tandem-hub publishers add` are accepted.
    trust_on_first_use: bool = False

    def __post_init__(self) -> None:
        _switch("publishers.trust_on_first_use", self.trust_on_first_use)


@dataclass(frozen=True)
class DevicesConfig:
    """[devices]: the fleet registry."""

    offline_after_s: float = 90.0  # a device not heard from for this long is offline

    def __post_init__(self) -> None:
        _positive("devices", self, "offline_after_s")


@dataclass(frozen=True)
class TelemetryConfig:
    """[telemetry]: ingestion of the agents' windows (MQTT -> SQLite) feeding the drift engine."""

    enabled: bool = True
    # None: a plain subscription (survives a Mosquitto restart); a name: $share/<name>/... for hub replicas.
    share_group: str | None = None
    # Raw windows (~450 bytes each stored) are kept this long, then only their rollups (cloud_hub/telemetry/retention.py):
    # per cohort, minute rows for minute_retention_s (>= drift span + baseline: a restart refills the drift engine
    # from them); per device, minute rows for device_minute_retention_s (rollout quality gates judge a wave on them,
    # console charts past raw retention); hour rows for rollup_retention_s. A pass runs every rollup_interval_s.
    # Bytes per device these defaults hold: docs/storage.md, "Telemetry on disk".
    retention_s: float = 300.0
    minute_retention_s: float = 5400.0
    device_minute_retention_s: float | None = 1200.0  # None: minute_retention_s
    rollup_retention_s: float = 400 * 86400.0
    rollup_interval_s: float = 30.0

    def __post_init__(self) -> None:
        _switch("telemetry.enabled", self.enabled)
        _positive(
            "telemetry",
            self,
            "retention_s",
            "minute_retention_s",
            "device_minute_retention_s",
            "rollup_retention_s",
            "rollup_interval_s",
        )
        if self.retention_s <= 60:
            raise _bad("telemetry.retention_s", f"{self.retention_s!r} must exceed 60 s (windows are rolled up first)")
        for key in ("minute_retention_s", "device_minute_retention_s"):
            value = getattr(self, key)
            if value is not None and value > self.rollup_retention_s:
                raise _bad(
                    f"telemetry.{key}",
                    f"{value!r} must be <= telemetry.rollup_retention_s ({self.rollup_retention_s!r})",
                )


@dataclass(frozen=True)
class DriftConfig:
    """[drift]: the drift engine's windows and alert thresholds (cloud_hub/telemetry/engine.py)."""

    eval_interval_s: float = 10.0
    span_s: float = 300.0
    baseline_s: float = 3600.0  # 0: the manifest's reference only
    min_samples: int = 200
    min_requests: int = 100
    open_above: float = 0.25  # PSI/JS/chi-square signals: open an alert above, close below
    close_below: float = 0.10
    rate_open_above: float = 0.10  # fallback- and error-rate rises
    rate_close_below: float = 0.05
    webhook_url: str | None = None

    def __post_init__(self) -> None:
        _positive(
            "drift", self, "eval_interval_s", "span_s", "min_samples", "min_requests", "open_above", "rate_open_above"
        )
        if not _number(self.baseline_s) or self.baseline_s < 0:
            raise _bad("drift.baseline_s", f"{self.baseline_s!r} must be >= 0")
        if self.close_below > self.open_above:
            raise _bad("drift.close_below", f"{self.close_below} must be <= drift.open_above ({self.open_above})")
        if self.rate_close_below > self.rate_open_above:
            raise _bad(
                "drift.rate_close_below",
                f"{self.rate_close_below} must be <= drift.rate_open_above ({self.rate_open_above})",
            )
        _http_url("drift.webhook_url", self.webhook_url)


@dataclass(frozen=True)
class RolloutsConfig:
    """[rollouts]: staged OTA rollouts (/v1/rollouts, MQTT commands); needs the HTTP server or http.public_url."""

    enabled: bool = True
    tick_s: float = 0.5
    watch_s: float | None = None  # health-watch length sent to devices; None: each device's own

    def __post_init__(self) -> None:
        _switch("rollouts.enabled", self.enabled)
        _positive("rollouts", self, "tick_s", "watch_s")


@dataclass(frozen=True)
class HardExamplesConfig:
    """[hard_examples]: inputs agents upload with telemetry, kept in <data_dir>/hard_examples.sqlite."""

    max: int = 100_000  # the newest this many are kept

    def __post_init__(self) -> None:
        _positive("hard_examples", self, "max")


@dataclass(frozen=True)
class ClusterConfig:
    """[cluster]: several hub replicas on one database and one data dir (docs/architecture.md, "Replicas").

    Enabled, the hub needs an external broker (mqtt.url); the rollout controller, device-status watch,
    hard-example ingest and drift engine run on the replica holding the lease; telemetry is shared."""

    enabled: bool = False
    replica_id: str | None = None  # None: <hostname>-<pid>; unique per running replica
    lease_ttl_s: float = 6.0  # a dead holder's singletons move after at most this + poll_s
    renew_s: float = 1.5
    poll_s: float = 1.0
    share_group: str = "tandem-hub"  # telemetry arrives on $share/<share_group>/...
    # 0: a replica's share of telemetry is not queued while it is away (the others get it all; what was in flight
    # to a killed replica comes back through the gap tracker's resend requests)
    share_session_expiry_s: int = 0

    def __post_init__(self) -> None:
        _switch("cluster.enabled", self.enabled)
        _positive("cluster", self, "lease_ttl_s", "renew_s", "poll_s")
        if self.renew_s * 2 + 1.0 > self.lease_ttl_s:
            raise _bad(
                "cluster.renew_s", f"{self.renew_s} * 2 + 1 s must fit in cluster.lease_ttl_s ({self.lease_ttl_s})"
            )
        for key, value in (("cluster.replica_id", self.replica_id), ("cluster.share_group", self.share_group)):
            if value is not None and not (isinstance(value, str) and _NAME_RE.match(value)):
                raise _bad(key, f"{value!r}: 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(self.share_session_expiry_s, int) or self.share_session_expiry_s < 0:
            raise _bad("cluster.share_session_expiry_s", f"{self.share_session_expiry_s!r} must be an integer >= 0")


@dataclass(frozen=True)
class HubConfig:
    """Everything `tandem-hub serve` needs, by TOML section; every field has a first-run default."""

    data_dir: Path = Path("./tandem-data")
    # Mutual TLS: a `tandem-hub pki init` folder. Set, the hub's Mosquitto listens with TLS and the fleet ACL,
    # its MQTT clients connect as the hub identity over mqtts://, gRPC inference demands device certificates and
    # HTTP is HTTPS. None: plain text, development only.
    tls_dir: Path | None = None
    http: HttpConfig = field(default_factory=HttpConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    publishers: PublishersConfig = field(default_factory=PublishersConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    rollouts: RolloutsConfig = field(default_factory=RolloutsConfig)
    hard_examples: HardExamplesConfig = field(default_factory=HardExamplesConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)  # [tracing] otlp_endpoint: export spans
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # [cluster]: replicas on one database

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.tls_dir is not None:
            object.__setattr__(self, "tls_dir", Path(self.tls_dir))
        url = self.mqtt.url
        if self.tls_dir is not None and url is not None and not url.startswith("mqtts://"):
            raise _bad("mqtt.url", f"{url!r} must be mqtts:// with tls_dir (no silent plain text)")
        if self.cluster.replica_id is not None and not self.cluster.enabled:
            raise _bad("cluster.replica_id", "is set but cluster.enabled is off (--cluster)")
        if self.cluster.enabled and url is None:
            raise _bad(
                "mqtt.url", "cluster.enabled needs an external MQTT 5 broker every replica shares (mqtt://host:1883)"
            )
        if self.http.client_certs != "none" and self.tls_dir is None:
            raise _bad(
                "http.client_certs",
                f"{self.http.client_certs!r} needs tls_dir (the fleet CA that signs client certificates)",
            )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hub.db"

    @property
    def database(self) -> str | Path:
        """The hub registry's database: storage.database_url when set, else <data_dir>/hub.db (SQLite)."""
        return self.storage.database_url or self.db_path

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def release_key_path(self) -> Path:
        return self.keys_dir / "release.ed25519.pem"

    @property
    def publishers_dir(self) -> Path:
        """Trusted publisher public keys, one <key_id>.pem each (tandem-hub publishers)."""
        return self.keys_dir / "publishers"

    def with_overrides(self, changes: Mapping[str, Any]) -> HubConfig:
        """A validated copy with dotted keys changed: `config.with_overrides({"http.port": 0})`."""
        return _loading(lambda: config_loader.override(self, changes))

    @classmethod
    def from_keys(cls, keys: Mapping[str, Any]) -> HubConfig:
        """Build from dotted keys without the environment (code and tests): {"data_dir": p, "http.port": 0}."""
        return _loading(lambda: config_loader.build(cls, config_loader.nest(keys)))

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> HubConfig:
        """Defaults, then the TOML file, then TANDEM_HUB_* env vars (None: os.environ, where unknown names are
        logged with the closest key), then `overrides` (dotted keys, e.g. command-line flags; None values: not
        given)."""
        if env is None:
            env = os.environ
            config_loader.unknown_env(cls, env, ENV_PREFIX, also=CLIENT_ENV)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        try:
            data = config_loader.read_toml(path) if path is not None else {}
        except config_loader.ConfigValueError as exc:  # its message names the file already
            raise ConfigError(str(exc)) from None
        try:
            _refuse_flat(data)
            return _loading(lambda: config_loader.build(cls, data, env=env, prefix=ENV_PREFIX, overrides=given))
        except (config_loader.ConfigValueError, ConfigError) as exc:
            raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


SECTIONS: dict[str, tuple[str, ...]] = config_loader.section_keys(HubConfig)

# The keys of the one flat [hub] table this config replaced, and where each lives now (named in the error).
_MOVED = {
    "http_host": "http.host",
    "http_port": "http.port",
    "public_url": "http.public_url",
    "rest_client_certs": "http.client_certs",
    "rest_rate_per_s": "http.rate_per_s",
    "rest_burst": "http.burst",
    "max_json_body_bytes": "http.max_json_body_bytes",
    "max_upload_mb": "http.max_upload_mb",
    "grpc_host": "grpc.host",
    "grpc_port": "grpc.port",
    "mqtt_url": "mqtt.url",
    "broker": "mqtt.broker",
    "mqtt_host": "mqtt.host",
    "mqtt_port": "mqtt.port",
    "model_dirs": "models.dirs",
    "model_aliases": "models.aliases",
    "inference_profile": "models.inference_profile",
    "profile_dirs": "models.profile_dirs",
    "publisher_trust_on_first_use": "publishers.trust_on_first_use",
    "offline_after_s": "devices.offline_after_s",
    "telemetry": "telemetry.enabled",
    "telemetry_share_group": "telemetry.share_group",
    "telemetry_retention_s": "telemetry.retention_s",
    **{f"drift_{key}": f"drift.{key}" for key in SECTIONS["drift"]},
    "rollouts": "rollouts.enabled",
    "rollout_tick_s": "rollouts.tick_s",
    "rollout_watch_s": "rollouts.watch_s",
    "hard_examples_max": "hard_examples.max",
}


def _refuse_flat(data: Mapping[str, Any]) -> None:
    """A file in the old flat shape (a [hub] table, or http_port = ... at the top) is named, with the new key."""
    flat = data["hub"] if isinstance(data.get("hub"), Mapping) else data
    for key, value in flat.items():
        if key in _MOVED and not isinstance(value, Mapping):
            section, _, name = _MOVED[key].partition(".")
            raise ConfigError(f"{key}: the hub's settings now live in sections: write [{section}] {name} = ...")
    if "hub" in data:
        raise ConfigError("[hub]: the hub's settings now live in sections ([http], [grpc], [mqtt], ...), not [hub]")


def _loading(step: Any) -> HubConfig:
    """Run a loader step; its ConfigValueError becomes our ConfigError (the message names section.key)."""
    try:
        config: HubConfig = step()
    except config_loader.ConfigValueError as exc:
        raise ConfigError(str(exc)) from None
    return config
