"""The hub's telemetry component: plugs TelemetryIngestService into `Hub.add_service`.

It starts once the hub's broker is up (so the MQTT URL is known), keeps its windows in
<data_dir>/telemetry.sqlite, reads drift references from the model registry, and puts
itself at `hub.app.state.telemetry` for the REST routes in cloud_hub.telemetry.routes.
"""

from __future__ import annotations

import logging
from typing import Any

from cloud_hub.errors import ConfigError
from cloud_hub.telemetry.service import TelemetryIngestService, TelemetryServiceConfig

log = logging.getLogger(__name__)


class HubTelemetry:
    """`hub.add_service(HubTelemetry())` before `hub.start()`."""

    def __init__(self, config: TelemetryServiceConfig | None = None) -> None:
        self.config = config or TelemetryServiceConfig()
        self.service: TelemetryIngestService | None = None

    def start(self, hub: Any) -> None:
        if not hub.mqtt_url:
            raise ConfigError("telemetry needs an MQTT broker: set mqtt_url (env TANDEM_HUB_MQTT_URL) or let the hub start one")
        self.service = TelemetryIngestService(hub.config.data_dir, hub.mqtt_url,
                                              lambda name, version: hub.registry.manifest(name, version), self.config)
        self.service.start()
        hub.app.state.telemetry = self.service
        log.info("hub telemetry started mqtt=%s db=%s", hub.mqtt_url, self.service.store.db.path)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
