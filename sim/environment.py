"""The real parts a simulation runs against: a broker, a hub (inference, telemetry + drift,
rollouts) on embedded defaults, and a FaultProxy in front of the hub's gRPC and the broker.

Devices connect through the proxies; the hub's own clients connect to the broker
directly, so an "outage" cuts the devices off the hub the way a WAN failure would.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Unpack

from tandem.cloud_hub.broker import BrokerHandle, start_broker
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.telemetry.alerts import Hysteresis
from tandem.cloud_hub.telemetry.engine import DriftConfig
from tandem.cloud_hub.telemetry.hub_service import HubTelemetry
from tandem.cloud_hub.telemetry.service import TelemetryIngestService, TelemetryServiceConfig
from tandem.protocols.topics import parse_mqtt_url
from tandem.sim.netfault import FaultChanges, FaultProxy
from tandem.sim.releases import Models
from tandem.sim.scenario import DriftSettings

log = logging.getLogger(__name__)


class Environment:
    """`Environment(workdir, models, drift).start()`; `stop()` tears everything down in reverse."""

    def __init__(
        self,
        workdir: Path,
        models: Models,
        drift: DriftSettings,
        *,
        window_s: float = 1.0,
        rollout_tick_s: float = 0.2,
        watch_s: float | None = None,
    ) -> None:
        self.workdir = workdir
        self.models = models
        self.drift = drift
        self.window_s = window_s
        self.rollout_tick_s = rollout_tick_s
        self.watch_s = watch_s
        self.broker: BrokerHandle | None = None
        self.hub: Hub | None = None
        self._telemetry = HubTelemetry(
            TelemetryServiceConfig(
                eval_interval_s=drift.eval_interval_s,
                drift=DriftConfig(
                    span_s=drift.span_s,
                    baseline_s=drift.baseline_s,
                    bucket_s=window_s,
                    min_samples=drift.min_samples,
                    min_requests=drift.min_requests,
                    distribution=Hysteresis(drift.open_above, drift.close_below, k_open=drift.k_open),
                    rate=Hysteresis(drift.rate_open_above, drift.rate_close_below, k_open=drift.k_open),
                ),
            )
        )
        self.grpc_proxy: FaultProxy | None = None
        self.mqtt_proxy: FaultProxy | None = None
        self.device_token = ""

    def start(self) -> "Environment":
        shutil.rmtree(self.workdir / "hub", ignore_errors=True)
        self.broker = start_broker("auto", self.workdir / "broker", "127.0.0.1", 0)
        hub = self.hub = Hub(
            HubConfig.from_keys(
                {
                    "data_dir": self.workdir / "hub",
                    "http.port": 0,
                    "grpc.port": 0,
                    "mqtt.url": self.broker.url,
                    "models.dirs": (self.models.cloud,),
                    "rollouts.tick_s": self.rollout_tick_s,
                    "rollouts.watch_s": self.watch_s,
                }
            )
        )
        hub.add_service(self._telemetry)  # ours, with the scenario's drift settings
        hub.start()
        if getattr(hub, "rollouts", None) is None:
            from tandem.cloud_hub.rollouts.attach import attach_rollouts

            attach_rollouts(hub, tick_s=self.rollout_tick_s, watch_s=self.watch_s)
        hub.publishers.add(self.models.publisher_pem, "sim")  # the sim's compiler is a trusted publisher
        hub.registry.register_dir(self.models.edge)
        self.device_token = hub.tokens.create("sim-fleet", "read").token
        if hub.grpc_port is None:
            raise RuntimeError("the hub started without a gRPC port")
        self.grpc_proxy = FaultProxy("127.0.0.1", hub.grpc_port, name="grpc").start()
        self.mqtt_proxy = FaultProxy(*parse_mqtt_url(self.broker.url), name="mqtt").start()
        return self

    @property
    def telemetry(self) -> TelemetryIngestService:
        assert self._telemetry.service is not None, "the environment is not started"
        return self._telemetry.service

    def _hub(self) -> Hub:
        assert self.hub is not None, "the environment is not started"
        return self.hub

    def _proxies(self) -> tuple[FaultProxy, FaultProxy]:
        """(gRPC, MQTT) fault proxies."""
        assert self.grpc_proxy is not None and self.mqtt_proxy is not None, "the environment is not started"
        return self.grpc_proxy, self.mqtt_proxy

    @property
    def rollouts(self) -> Any:
        return self._hub().rollouts

    @property
    def grpc_url(self) -> str:
        return self._proxies()[0].url_hostport

    @property
    def mqtt_url(self) -> str:
        """The broker as devices reach it (through the fault proxy)."""
        return f"mqtt://{self._proxies()[1].url_hostport}"

    def register(self, kind: str) -> tuple[str, str]:
        """Register release `kind` (good, bad, selftest_fail) with the hub; (model, version)."""
        record = self._hub().registry.register_dir(self.models.release(kind))
        return _name_version(record)

    def outage(self, on: bool) -> None:
        for p in self._proxies():
            p.partition(on)

    def network(self, target: str = "both", **faults: Unpack[FaultChanges]) -> None:
        for name, p in zip(("grpc", "mqtt"), self._proxies()):
            if target in (name, "both"):
                p.set(**faults)

    def stop(self) -> None:
        for p in (self.grpc_proxy, self.mqtt_proxy):
            if p is not None:
                p.stop()
        if self.hub is not None:
            self.hub.stop()
            self.hub = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def _name_version(record: Any) -> tuple[str, str]:
    if isinstance(record, dict):
        return record["name"], record["version"]
    return getattr(record, "name"), getattr(record, "version")
