"""Plug rollouts into a Hub: store next to its database, service on its broker, routes on its app.

`Hub.start()` does this by default (HubConfig.rollouts) once its HTTP server is up,
through `HubRollouts`; `attach_rollouts` is the same step for code that wants its own
settings (it replaces a rollout service the hub already runs).
"""

from __future__ import annotations

import logging
from typing import Any

from tandem.cloud_hub.errors import HubError
from tandem.cloud_hub.rollouts.service import DriftAlerts, RolloutService, RolloutServiceConfig
from tandem.cloud_hub.rollouts.store import ROLLOUTS_DB_FILENAME, RolloutStore
from tandem.cloud_hub.telemetry.rollups import DeviceSum

log = logging.getLogger(__name__)


def attach_rollouts(
    hub: Any, *, public_url: str | None = None, drift_alerts: DriftAlerts | None = None, **config: Any
) -> RolloutService:
    """After `hub.start()`: start the rollout service and serve /v1/rollouts; `hub.rollouts` is set.

    `public_url` is the hub's HTTP URL as devices see it (default: HubConfig.public_url, else hub.http_url);
    `config` are RolloutServiceConfig fields (tick_s, watch_s, command_ttl_s, client_id). `hub.stop()` stops it.
    """
    url = public_url or hub.config.http.public_url or hub.http_url
    if not url or not hub.mqtt_url:
        raise HubError("rollouts need the hub's HTTP server (or public_url) and MQTT broker: call hub.start() first")
    if getattr(hub.config, "tls_dir", None) is not None and url.startswith("http://"):
        log.warning(
            "rollouts: public_url %s is plain http on a TLS hub; devices will send their token in clear (use https://)",
            url,
        )
    previous = getattr(hub, "rollouts", None)
    if previous is not None:  # one rollout service per hub: its MQTT client id and its store are the hub's
        _stop(previous)
    if drift_alerts is None:
        drift_alerts = _drift_alerts_of(hub)
    store = RolloutStore.open(hub.config.storage.database_url or hub.config.data_dir / ROLLOUTS_DB_FILENAME)
    try:
        service = RolloutService(
            store,
            hub.registry,
            hub.devices,
            hub.key,
            RolloutServiceConfig(mqtt_url=hub.mqtt_url, public_url=url, **config),
            drift_alerts=drift_alerts,
            device_windows=_device_windows_of(hub),
        )
    except BaseException:
        store.close()
        raise
    app = hub.app
    if not _serves_rollouts(app):  # create_app includes the routes; an app built elsewhere may not
        from tandem.cloud_hub.rollouts.routes import router

        app.include_router(router)
        app.openapi_schema = None
    hub.rollouts = service
    service.start()
    log.info("rollouts started mqtt=%s public_url=%s", hub.mqtt_url, url)
    return service


class HubRollouts:
    """The hub's own rollout service, started after HTTP and stopped before it (see Hub.start)."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self._hub: Any = None

    @classmethod
    def adopt(cls, hub: Any) -> "HubRollouts":
        """The stopper for a service `attach_rollouts` started on its own."""
        handle = cls()
        handle._hub = hub
        return handle

    def start(self, hub: Any) -> None:
        attach_rollouts(hub, **self.config)
        self._hub = hub

    def stop(self) -> None:
        if self._hub is not None:
            service, self._hub.rollouts = self._hub.rollouts, None
            self._hub = None
            if service is not None:
                _stop(service)


def _serves_rollouts(app: Any) -> bool:
    """Whether a route named list_rollouts is in the app, found by walking the routes by name.

    Not `app.url_path_for`: FastAPI (0.165) builds every included router's effective routes for it (their
    pydantic fields), 0.1-0.6 s of the hub's start; the routes already carry their names.
    """
    return _has_route_named(app.routes, "list_rollouts")


def _has_route_named(routes: Any, name: str) -> bool:
    for route in routes:
        if getattr(route, "name", None) == name:
            return True
        included = getattr(route, "original_router", None)  # FastAPI's included router keeps the router it wraps
        if included is not None and _has_route_named(included.routes, name):
            return True
    return False


def _stop(service: RolloutService) -> None:
    """Stop and close; safe on a service its owner already stopped."""
    try:
        service.stop()
    finally:
        service.store.close()


def _device_windows_of(hub: Any) -> Any:
    """Per-device sums from the hub's telemetry (quality gates against a control cohort): the device rollups
    plus the raw windows not rolled up yet, so a wave is judged the same after its raw windows are deleted."""
    if not getattr(getattr(hub.config, "telemetry", None), "enabled", False):
        return None

    def sums(device_ids: list[str], since: float) -> list[DeviceSum]:
        telemetry = getattr(hub, "telemetry", None)
        return [] if telemetry is None else telemetry.rollups.device_sums(device_ids, since)

    return sums


def _drift_alerts_of(hub: Any) -> DriftAlerts | None:
    """Open drift alerts per (model, version) from the hub's telemetry, read when a gate is evaluated."""

    def count(model: str, version: str) -> int:
        telemetry = getattr(hub, "telemetry", None)
        if telemetry is None:
            return 0
        return sum(
            1 for a in telemetry.store.open_alerts() if a["model_name"] == model and a["model_version"] == version
        )

    return count
