"""The agent's links to the hub over MQTT, built from AgentConfig: telemetry out, OTA commands in.

Both are optional: no `mqtt_url`, no broker needed. Imported only when configured, so an
edge-only agent never loads paho.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.model import LoadedModel
from tandem.edge_agent.ota.machine import HealthFigures, WatchPolicy

log = logging.getLogger(__name__)


def make_telemetry(cfg: AgentConfig, model: LoadedModel, hard_examples: Any = None, metrics: Any = None) -> Any:
    """A started TelemetryService for `model`, its outbox under cfg.hard_examples.data_dir.

    `hard_examples` (the agent's HardExampleQueue) is uploaded through the outbox's class 1;
    `metrics` (AgentMetrics) gains the per-class outbox gauges.
    """
    from tandem.edge_agent.telemetry import OutboxError, PublisherConfig, TelemetryService
    from tandem.edge_agent.telemetry.outbox import OutboxDamagedError
    from tandem.protocols.tls import TlsConfigError

    url = cfg.telemetry.mqtt_url
    if url is None:
        raise ConfigError("telemetry.mqtt_url: telemetry needs the hub's broker")
    try:
        service = TelemetryService(
            url,
            cfg.server.device_id,
            model.manifest,
            cfg.hard_examples.data_dir,
            window_s=cfg.telemetry.window_s,
            max_requests=cfg.telemetry.max_requests,
            profile=cfg.model.profile,
            tags=cfg.server.tags,
            variant=model.variant.id,
            selection=model.selection,
            input_every=cfg.telemetry.input_every,
            outbox_max_rows=cfg.telemetry.outbox_max,
            replay_s=cfg.telemetry.replay_s,
            replay_bytes=cfg.telemetry.replay_bytes,
            unstored_max=cfg.telemetry.unstored_max,
            hard_examples=hard_examples,
            publisher=PublisherConfig(mqtt_url=url, tls=cfg.telemetry.tls),
        )
    except OutboxDamagedError:
        raise  # names the file and the way out; not a setting
    except OutboxError as exc:
        raise ConfigError(f"hard_examples.data_dir: {exc}") from exc
    except TlsConfigError as exc:
        raise ConfigError(f"telemetry.mqtt_tls_*: {exc}") from exc
    if metrics is not None:
        service.register_metrics(metrics)
    return service.start()


def watch_policy(cfg: AgentConfig) -> WatchPolicy:
    return WatchPolicy(
        watch_s=cfg.ota.watch_s,
        min_requests=cfg.ota.min_requests,
        max_error_rate=cfg.ota.max_error_rate,
        max_fallback_rise=cfg.ota.max_fallback_rise,
        max_latency_ratio=cfg.ota.max_latency_ratio,
        commit_without_traffic=cfg.ota.commit_without_traffic,
    )


def make_ota_client(
    cfg: AgentConfig,
    on_switch: Callable[[Path], None],
    health: Callable[[], HealthFigures],
    status_sink: Callable[[bytes], None] | None = None,
) -> Any:
    """An OtaClient (not started) whose store is opened and repaired; install the first version before start.

    `status_sink` stores each OTA status durably (the telemetry outbox's class 0) instead of publishing it.
    """
    from tandem.edge_agent.ota.client import OtaClient, OtaClientConfig
    from tandem.edge_agent.ota.download import DownloadConfig
    from tandem.edge_agent.ota.errors import StoreError
    from tandem.protocols.tls import TlsConfigError

    url, key = cfg.telemetry.mqtt_url, cfg.ota.trusted_key
    if url is None or key is None:  # AgentConfig.validate() refuses ota.enabled without them
        raise ConfigError("ota.enabled: OTA needs telemetry.mqtt_url and ota.trusted_key")
    config = OtaClientConfig(
        cfg.server.device_id,
        cfg.model.profile,
        url,
        cfg.model_store_dir,
        key,
        hub_token=cfg.ota.hub_token,
        watch=watch_policy(cfg),
        tls=cfg.telemetry.tls,
        download=DownloadConfig(tls=cfg.telemetry.tls),
    )  # https: the same CA and identity as MQTT
    try:
        client = OtaClient(config, on_switch=on_switch, health=health, status_sink=status_sink)
    except TlsConfigError as exc:
        raise ConfigError(f"telemetry.mqtt_tls_*: {exc}") from exc
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(
            f"ota.trusted_key: {cfg.ota.trusted_key} is not an ed25519 public key PEM ({exc}); "
            "get it with `tandem-hub keys release`"
        ) from exc
    try:
        recovery = client.open_store()
        if recovery.rolled_back_trial is not None:
            log.warning(
                "ota: the agent stopped during a trial of %s; serving %s again",
                recovery.rolled_back_trial.get("version"),
                client.store.active_version,
            )
        if client.store.active_version is None:
            client.store.install_initial(cfg.model.dir)
            log.info(
                "ota store initialised store=%s version=%s from=%s",
                cfg.model_store_dir,
                client.store.active_version,
                cfg.model.dir,
            )
        else:
            log.info(
                "ota store serves version=%s (model_dir is only the first install) store=%s",
                client.store.active_version,
                cfg.model_store_dir,
            )
    except (StoreError, OSError) as exc:
        raise ConfigError(f"ota.ota_store_dir: {exc}") from exc
    return client


def telemetry_status(service: Any) -> dict[str, Any]:
    publisher, outbox = service.publisher, service.outbox
    return {
        "mqtt_url": publisher.config.mqtt_url,
        "connected": publisher.connected,
        "outbox_depth": len(outbox),
        "last_sequence": outbox.last_sequence,
        "outbox_dropped_total": outbox.dropped_total,
        "windows_closed": service.windows_closed,
        "model_version": service.aggregator.model.version,
        "outbox": outbox.stats(),
        "write_error": service.write_error,
        "write_failures": service.write_failures,
        "unstored": len(service._closed),
        "lost_local": service.unstored_dropped,
        "replay": outbox.replay_stats(),
        "clock_offset_s": publisher.clock_offset_s,
    }


def ota_status(client: Any) -> dict[str, Any]:
    state = client.store.state
    return {
        "state": client.updater.state,
        "store_dir": str(client.store.root),
        "active_version": client.store.active_version,
        "previous_version": client.store.previous_version,
        "max_accepted": state.max_accepted,
        "on_trial": state.trial is not None,
    }
