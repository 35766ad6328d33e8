"""Typed hub configuration: defaults for a first run, a TOML file ([hub] table), TANDEM_HUB_<KEY> env vars.

Loaded by protocols/config_loader.py, the agent's loader too: each value coerced from the field's type hint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tandem.cloud_hub.errors import ConfigError
from tandem.protocols import config_loader

__all__ = ["BROKER_KINDS", "ENV_PREFIX", "REST_CLIENT_CERTS", "HubConfig"]

ENV_PREFIX = "TANDEM_HUB_"
CLIENT_ENV = ("TANDEM_HUB_URL", "TANDEM_HUB_TOKEN", "TANDEM_HUB_CA")  # read by cloud_hub/client.py, not settings
BROKER_KINDS = ("auto", "mosquitto", "embedded")
REST_CLIENT_CERTS = ("none", "optional", "required")

_POSITIVE = (
    "telemetry_retention_s",
    "drift_eval_interval_s",
    "drift_span_s",
    "drift_min_samples",
    "drift_min_requests",
    "hard_examples_max",
    "drift_open_above",
    "drift_rate_open_above",
    "rollout_tick_s",
    "rollout_watch_s",
    "rest_rate_per_s",
    "max_json_body_bytes",
)


@dataclass(frozen=True)
class HubConfig:
    """Everything `tandem-hub serve` needs; port 0 picks a free port."""

    data_dir: Path = Path("./tandem-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 8001
    # None: start a broker for the fleet (see `broker`); otherwise an external mqtt://host:port.
    mqtt_url: str | None = None
    broker: str = "auto"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 0
    model_dirs: tuple[Path, ...] = ()
    # "asked=served" pairs: a request for model `asked` is answered by model `served` (e.g. digits-edge=digits-cloud,
    # so an agent's fallback naming its own model reaches the cloud pair). `--alias` on `tandem-hub serve`.
    model_aliases: tuple[str, ...] = ()
    # The hardware profile whose chosen variant the hub's gRPC server runs (gpu-cuda on a GPU host).
    inference_profile: str = "cpu-x86"
    # A device is offline when it has not been heard from for this long.
    offline_after_s: float = 90.0
    max_upload_mb: float = 2048.0
    profile_dirs: tuple[Path, ...] = field(default_factory=tuple)
    # The hub's HTTP base URL as devices reach it (OTA manifests and artifacts); None: the URL it listens on.
    public_url: str | None = None
    # Telemetry ingestion (MQTT -> SQLite) with the drift engine and alerts; the knobs below tune the drift engine.
    telemetry: bool = True
    # None: a plain subscription (survives a Mosquitto restart); a name: $share/<name>/... for hub replicas.
    telemetry_share_group: str | None = None
    telemetry_retention_s: float = 24 * 3600.0
    drift_eval_interval_s: float = 10.0
    drift_span_s: float = 300.0
    drift_baseline_s: float = 3600.0
    drift_min_samples: int = 200
    drift_min_requests: int = 100
    drift_open_above: float = 0.25  # PSI/JS/chi-square signals: open an alert above, close below
    drift_close_below: float = 0.10
    drift_rate_open_above: float = 0.10  # fallback- and error-rate rises
    drift_rate_close_below: float = 0.05
    drift_webhook_url: str | None = None
    # Staged OTA rollouts (/v1/rollouts, MQTT commands); needs the HTTP server or public_url.
    rollouts: bool = True
    rollout_tick_s: float = 0.5
    rollout_watch_s: float | None = None  # health-watch length sent to devices; None: each device's own
    # Hard examples agents upload (with telemetry): <data_dir>/hard_examples.sqlite keeps the newest this many.
    hard_examples_max: int = 100_000
    # Mutual TLS: a `tandem-hub pki init` folder. Set, the hub's Mosquitto listens with TLS and the fleet ACL,
    # its MQTT clients connect as the hub identity over mqtts://, and gRPC inference demands device certificates.
    # None: plain text, development only.
    tls_dir: Path | None = None
    # With tls_dir, REST/console/artifacts are HTTPS with the hub's server certificate; client certificates there:
    # "none" (bearer tokens only, browsers), "optional" (asked for, checked against the fleet CA if sent), "required".
    rest_client_certs: str = "none"
    # Per-token token bucket on REST (429 + Retry-After beyond it); /healthz is exempt.
    rest_rate_per_s: float = 20.0
    rest_burst: float = 60.0
    # DEV ONLY: register uploads signed by an unknown publisher key and trust that key from then on (logged at
    # WARNING each time). Off: only keys added with `tandem-hub publishers add` are accepted.
    publisher_trust_on_first_use: bool = False
    # REST request bodies (JSON) larger than this are refused with 413 before they are read; uploads have max_upload_mb.
    max_json_body_bytes: int = 1024 * 1024

    def aliases(self) -> dict[str, str]:
        """model_aliases as {asked: served}; ConfigError naming a pair that is not NAME=NAME."""
        out: dict[str, str] = {}
        for pair in self.model_aliases:
            asked, sep, served = (part.strip() for part in pair.partition("="))
            if not sep or not asked or not served or asked == served:
                raise ConfigError(
                    f"model_aliases (--alias): {pair!r} is not ASKED=SERVED with two different model "
                    "names, e.g. digits-edge=digits-cloud"
                )
            out[asked] = served
        return out

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "model_dirs", tuple(Path(p) for p in self.model_dirs))
        object.__setattr__(self, "profile_dirs", tuple(Path(p) for p in self.profile_dirs))
        if self.tls_dir is not None:
            object.__setattr__(self, "tls_dir", Path(self.tls_dir))
        for name in ("http_port", "grpc_port", "mqtt_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{name} (env {ENV_PREFIX}{name.upper()}): {value!r} is not a port 0-65535")
        object.__setattr__(self, "model_aliases", tuple(str(a) for a in self.model_aliases))
        self.aliases()  # refuses a malformed pair at start-up
        if self.broker not in BROKER_KINDS:
            raise ConfigError(
                f"broker (env {ENV_PREFIX}BROKER): {self.broker!r} is not one of {', '.join(BROKER_KINDS)}"
            )
        if self.mqtt_url is not None and not self.mqtt_url.startswith(("mqtt://", "mqtts://", "tcp://")):
            raise ConfigError(
                f"mqtt_url (env {ENV_PREFIX}MQTT_URL): {self.mqtt_url!r} should look like mqtt://host:1883"
            )
        if self.tls_dir is not None and self.mqtt_url is not None and not self.mqtt_url.startswith("mqtts://"):
            raise ConfigError(
                f"mqtt_url (env {ENV_PREFIX}MQTT_URL): {self.mqtt_url!r} must be mqtts:// with tls_dir "
                "(no silent plain text)"
            )
        if self.rest_client_certs not in REST_CLIENT_CERTS:
            raise ConfigError(
                f"rest_client_certs (env {ENV_PREFIX}REST_CLIENT_CERTS): {self.rest_client_certs!r} "
                f"is not one of {', '.join(REST_CLIENT_CERTS)}"
            )
        if self.rest_client_certs != "none" and self.tls_dir is None:
            raise ConfigError(
                f"rest_client_certs (env {ENV_PREFIX}REST_CLIENT_CERTS): {self.rest_client_certs!r} "
                "needs tls_dir (the fleet CA that signs client certificates)"
            )
        if isinstance(self.rest_burst, bool) or not isinstance(self.rest_burst, (int, float)) or self.rest_burst < 1:
            raise ConfigError(f"rest_burst (env {ENV_PREFIX}REST_BURST): {self.rest_burst!r} must be a number >= 1")
        if self.offline_after_s <= 0:
            raise ConfigError(f"offline_after_s (env {ENV_PREFIX}OFFLINE_AFTER_S): must be positive")
        if self.max_upload_mb <= 0:
            raise ConfigError(f"max_upload_mb (env {ENV_PREFIX}MAX_UPLOAD_MB): must be positive")
        for name in ("telemetry", "rollouts"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{name} (env {ENV_PREFIX}{name.upper()}): {getattr(self, name)!r} is not true or false"
                )
        for name in ("public_url", "drift_webhook_url"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
                raise ConfigError(
                    f"{name} (env {ENV_PREFIX}{name.upper()}): {value!r} should look like http://host:8080"
                )
        for name in _POSITIVE:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{name} (env {ENV_PREFIX}{name.upper()}): {value!r} must be a positive number")
        if (
            isinstance(self.drift_baseline_s, bool)
            or not isinstance(self.drift_baseline_s, (int, float))
            or self.drift_baseline_s < 0
        ):
            raise ConfigError(
                f"drift_baseline_s (env {ENV_PREFIX}DRIFT_BASELINE_S): {self.drift_baseline_s!r} must be >= 0"
            )
        if self.drift_close_below > self.drift_open_above:
            raise ConfigError(
                f"drift_close_below (env {ENV_PREFIX}DRIFT_CLOSE_BELOW): {self.drift_close_below} must be "
                f"<= drift_open_above ({self.drift_open_above})"
            )
        if self.drift_rate_close_below > self.drift_rate_open_above:
            raise ConfigError(
                f"drift_rate_close_below (env {ENV_PREFIX}DRIFT_RATE_CLOSE_BELOW): "
                f"{self.drift_rate_close_below} must be <= drift_rate_open_above "
                f"({self.drift_rate_open_above})"
            )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hub.db"

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

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> HubConfig:
        """Defaults, then the TOML file, then TANDEM_HUB_* env vars (None: os.environ, where unknown names are
        logged with the closest key), then explicit overrides (None: not given)."""
        if env is None:
            env = os.environ
            config_loader.unknown_env(cls, env, ENV_PREFIX, also=CLIENT_ENV)
        try:
            data = config_loader.read_toml(path) if path is not None else {}
            table = data["hub"] if isinstance(data.get("hub"), Mapping) else data
            return config_loader.build(
                cls, table, env=env, prefix=ENV_PREFIX, overrides={k: v for k, v in overrides.items() if v is not None}
            )
        except config_loader.ConfigValueError as exc:
            raise ConfigError(f"{path}: {exc}" if path is not None and exc.key else str(exc)) from None
