"""Plug rollouts into a running Hub: store next to its database, service on its broker, routes on its app."""

from __future__ import annotations

from typing import Any

from cloud_hub.errors import HubError
from cloud_hub.rollouts.service import DriftAlerts, RolloutService, RolloutServiceConfig
from cloud_hub.rollouts.store import RolloutStore


def attach_rollouts(hub: Any, *, public_url: str | None = None, drift_alerts: DriftAlerts | None = None,
                    **config: Any) -> RolloutService:
    """After `hub.start()`: start the rollout service and serve /v1/rollouts; `hub.rollouts` is set.

    `public_url` is the hub's HTTP URL as devices see it (default: hub.http_url).
    The caller stops it (`hub.rollouts.stop()`, `hub.rollouts.store.close()`) before `hub.stop()`.
    """
    from cloud_hub.rollouts.routes import router

    url = public_url or hub.http_url
    if not url or not hub.mqtt_url:
        raise HubError("rollouts need the hub's HTTP server and MQTT broker: call hub.start() first")
    store = RolloutStore.open(hub.config.data_dir / "rollouts.sqlite")
    service = RolloutService(store, hub.registry, hub.devices, hub.key,
                             RolloutServiceConfig(mqtt_url=hub.mqtt_url, public_url=url, **config),
                             drift_alerts=drift_alerts)
    app = hub.app
    app.include_router(router)
    app.openapi_schema = None
    hub.rollouts = service
    return service.start()
