"""Typed hub configuration: defaults for a first run, a TOML file, TANDEM_HUB_* env vars."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from cloud_hub.errors import ConfigError

ENV_PREFIX = "TANDEM_HUB_"
BROKER_KINDS = ("auto", "mosquitto", "embedded")


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
    # The hardware profile whose chosen variant the hub's gRPC server runs (gpu-cuda on a GPU host).
    inference_profile: str = "cpu-x86"
    # A device is offline when it has not been heard from for this long.
    offline_after_s: float = 90.0
    max_upload_mb: float = 2048.0
    profile_dirs: tuple[Path, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "model_dirs", tuple(Path(p) for p in self.model_dirs))
        object.__setattr__(self, "profile_dirs", tuple(Path(p) for p in self.profile_dirs))
        for name in ("http_port", "grpc_port", "mqtt_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{name} (env {ENV_PREFIX}{name.upper()}): {value!r} is not a port 0-65535")
        if self.broker not in BROKER_KINDS:
            raise ConfigError(f"broker (env {ENV_PREFIX}BROKER): {self.broker!r} is not one of {', '.join(BROKER_KINDS)}")
        if self.mqtt_url is not None and not self.mqtt_url.startswith(("mqtt://", "mqtts://", "tcp://")):
            raise ConfigError(f"mqtt_url (env {ENV_PREFIX}MQTT_URL): {self.mqtt_url!r} should look like mqtt://host:1883")
        if self.offline_after_s <= 0:
            raise ConfigError(f"offline_after_s (env {ENV_PREFIX}OFFLINE_AFTER_S): must be positive")
        if self.max_upload_mb <= 0:
            raise ConfigError(f"max_upload_mb (env {ENV_PREFIX}MAX_UPLOAD_MB): must be positive")

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

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "HubConfig":
        """Defaults, then the TOML file, then TANDEM_HUB_* env vars, then explicit overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read hub config ({exc})") from exc
            values.update(data.get("hub", data))
        values.update(_from_env(os.environ if env is None else env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown hub setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(cls(), **_coerce(values))


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(HubConfig):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            out[f.name] = raw
    return out


def _coerce(values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn strings from env/TOML into the field types, naming the key on failure."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key in ("http_port", "grpc_port", "mqtt_port"):
                out[key] = int(value)
            elif key in ("offline_after_s", "max_upload_mb"):
                out[key] = float(value)
            elif key in ("model_dirs", "profile_dirs"):
                items = value.split(os.pathsep) if isinstance(value, str) else list(value)
                out[key] = tuple(Path(p) for p in items if str(p))
            elif key == "data_dir":
                out[key] = Path(value)
            else:
                out[key] = value
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key} (env {ENV_PREFIX}{key.upper()}): cannot use {value!r} ({exc})") from exc
    return out
