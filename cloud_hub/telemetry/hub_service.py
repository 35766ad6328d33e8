"""The hub's telemetry component: plugs TelemetryIngestService into `Hub.add_service`.

It starts once the hub's broker is up (so the MQTT URL is known), keeps its windows in
<data_dir>/telemetry.sqlite (or the telemetry schema of storage.database_url), reads drift references
from the model registry, and is
reachable as `hub.telemetry` (and `hub.app.state.telemetry`) for the REST routes in
cloud_hub.telemetry.routes and the rollout gates. `Hub.start()` adds one by default
(HubConfig.telemetry.enabled); a hub given its own HubTelemetry uses that one instead. On a hub
replica ([cluster]) it is a ReplicaTelemetryService: a share of the windows, drift on the lease holder.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.telemetry.alerts import Hysteresis
from tandem.cloud_hub.telemetry.engine import DriftConfig
from tandem.cloud_hub.telemetry.retention import RetentionPolicy
from tandem.cloud_hub.telemetry.service import TelemetryIngestService, TelemetryServiceConfig

if TYPE_CHECKING:
    from tandem.cloud_hub.config import HubConfig

log = logging.getLogger(__name__)


def telemetry_config(config: HubConfig, replica_id: str | None = None) -> TelemetryServiceConfig:
    """The TelemetryServiceConfig a HubConfig's [telemetry] and [drift] sections describe (and, for a hub
    replica, [cluster]: a $share subscription under a client id of its own)."""
    drift = DriftConfig(
        span_s=config.drift.span_s,
        baseline_s=config.drift.baseline_s,
        min_samples=config.drift.min_samples,
        min_requests=config.drift.min_requests,
        distribution=Hysteresis(config.drift.open_above, config.drift.close_below),
        rate=Hysteresis(config.drift.rate_open_above, config.drift.rate_close_below),
    )
    ingest: dict[str, Any] = {"share_group": config.telemetry.share_group} if config.telemetry.share_group else {}
    if replica_id is not None:  # a hub replica: its own session in the shared group (cloud_hub/cluster)
        ingest = {
            "share_group": config.telemetry.share_group or config.cluster.share_group,
            "client_id": f"tandem-hub-telemetry-{replica_id}",
            "session_expiry_s": config.cluster.share_session_expiry_s,
        }
    return TelemetryServiceConfig(
        eval_interval_s=config.drift.eval_interval_s,
        retention=RetentionPolicy(
            raw_retention_s=config.telemetry.retention_s,
            minute_retention_s=config.telemetry.minute_retention_s,
            device_minute_retention_s=config.telemetry.device_minute_retention_s,
            hour_retention_s=config.telemetry.rollup_retention_s,
            interval_s=config.telemetry.rollup_interval_s,
        ),
        webhook_url=config.drift.webhook_url,
        drift=drift,
        ingest=ingest,
    )


class HubTelemetry:
    """`hub.add_service(HubTelemetry())` before `hub.start()`; without a config it follows the hub's."""

    def __init__(self, config: TelemetryServiceConfig | None = None) -> None:
        self.config = config
        self.service: TelemetryIngestService | None = None
        self._hub: Any = None

    def start(self, hub: Any) -> None:
        if not hub.mqtt_url:
            raise ConfigError(
                "telemetry needs an MQTT broker: set mqtt.url (env TANDEM_HUB_MQTT_URL) or let the hub start one"
            )
        replica_id = getattr(hub, "replica_id", None)
        config = self.config or telemetry_config(hub.config, replica_id)
        tls = getattr(hub, "mqtt_tls", None)
        if tls is not None and "tls" not in config.ingest:  # the hub's mutual-TLS identity (HubConfig.tls_dir)
            config = replace(config, ingest={**config.ingest, "tls": tls})
        service_class = TelemetryIngestService
        if replica_id is not None:  # its share of the windows; drift, alerts and retention while holding the lease
            from tandem.cloud_hub.cluster.telemetry import ReplicaTelemetryService

            service_class = ReplicaTelemetryService
        self.service = service_class(
            hub.config.storage.database_url or hub.config.data_dir,
            hub.mqtt_url,
            lambda name, version: hub.registry.manifest(name, version),
            config,
        )
        self.service.start()
        self._hub = hub
        hub.telemetry = self.service
        hub.app.state.telemetry = self.service
        log.info("hub telemetry started mqtt=%s db=%s", hub.mqtt_url, self.service.store.db.path)

    def stop(self) -> None:
        if self._hub is not None:
            # the routes answer 503 from now on instead of reading a closed store
            self._hub.telemetry = None
            self._hub.app.state.telemetry = None
            self._hub = None
        if self.service is not None:
            self.service.stop()
            self.service = None
