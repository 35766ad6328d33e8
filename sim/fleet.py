"""Many virtual devices on a few threads: shared sessions, shared gRPC channels, shared MQTT uplinks.

Devices are split into shards; each shard's worker thread serves its devices'
requests when due (Poisson arrivals at each device's rate) and closes their telemetry
windows, so a thousand devices need a handful of threads. What is shared: loaded
sessions (one per variant), gRPC channels (a few; each device keeps its own
CircuitBreaker and deadline), MQTT connections for telemetry (one per
`devices_per_uplink`; each device keeps its own outbox, sequence and topic).
OTA-enabled devices each run the agent's full OtaClient with their own MQTT session.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc

from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.fallback import channel_options, parse_target
from tandem.edge_agent.policy import ConfidencePolicy
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.sim.device import ChannelFallback, DeviceSpec, VirtualDevice
from tandem.sim.metrics import Recorder
from tandem.sim.sessions import SessionPool
from tandem.sim.streams import Change, Dataset, DeviceStream
from tandem.sim.uplink import SharedUplink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetConfig:
    workers: int = 4
    devices_per_uplink: int = 250
    grpc_channels: int = 4
    window_s: float = 10.0
    fallback_deadline_ms: float = 200.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 2.0
    policy_kind: str = "max_prob"
    threshold: float = 0.8
    hub_model: str = "digits-cloud"


@dataclass(frozen=True)
class OtaSettings:
    """What OTA-enabled devices need from the hub."""

    token: str
    trusted_pem: str
    watch: Any  # edge_agent.ota.machine.WatchPolicy
    mqtt_url: str
    poll_s: float = 0.05


class Fleet:
    """Build with specs, `start(model_dir)`, `run_for(seconds)` or `start_serving()` / `stop()`."""

    def __init__(
        self,
        specs: Sequence[DeviceSpec],
        *,
        data: Dataset,
        changes: Callable[[DeviceSpec], Sequence[Change]],
        hub_grpc: str,
        mqtt_url: str,
        workdir: Path,
        config: FleetConfig = FleetConfig(),
        ota: OtaSettings | None = None,
        pool: SessionPool | None = None,
        recorder: Recorder | None = None,
        external: Sequence[Any] = (),
    ) -> None:
        """`external`: devices served by real agent processes (sim.agent_proc); the workers drive them too."""
        self.config = config
        self.workdir = workdir
        self.pool = pool or SessionPool()
        self._owns_pool = pool is None
        self.recorder = recorder or Recorder()
        self.ota = ota
        target, _ = parse_target(hub_grpc)
        self._channels = [
            grpc.insecure_channel(target, options=channel_options()) for _ in range(max(1, config.grpc_channels))
        ]
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        policy = ConfidencePolicy(config.policy_kind, config.threshold)
        self.devices: list[VirtualDevice] = []
        for i, spec in enumerate(specs):
            breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
            fallback = ChannelFallback(
                hub_grpc, stubs[i % len(stubs)], deadline_ms=config.fallback_deadline_ms, breaker=breaker
            )
            stream = DeviceStream(data, changes(spec), seed=spec.seed)
            self.devices.append(
                VirtualDevice(
                    spec,
                    self.pool,
                    stream,
                    policy,
                    fallback,
                    config.hub_model,
                    workdir / spec.device_id,
                    config.window_s,
                )
            )
        self.external = list(external)
        self.uplinks: list[SharedUplink] = []
        self._mqtt_url = mqtt_url
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed: queue.Queue[tuple[Any, Any] | None] = queue.Queue()
        self._storer: threading.Thread | None = None
        self.t0 = time.monotonic()

    @property
    def by_id(self) -> dict[str, VirtualDevice]:
        return {d.device_id: d for d in self.devices}

    def sim_time(self) -> float:
        return time.monotonic() - self.t0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, model_dir: Path) -> "Fleet":
        """Connect telemetry uplinks, then install `model_dir` on every device (OTA devices through their
        A/B store) and start OTA clients.

        Uplinks connect first so their sockets get low file descriptors (see SharedUplink)."""
        per = max(1, self.config.devices_per_uplink)
        groups = [self.devices[k : k + per] for k in range(0, len(self.devices), per)]
        self.uplinks = [SharedUplink(self._mqtt_url, f"{self.workdir.name}-{i}").start() for i in range(len(groups))]
        deadline = time.monotonic() + 10
        while not all(u.connected for u in self.uplinks) and time.monotonic() < deadline:
            time.sleep(0.02)
        for uplink, group in zip(self.uplinks, groups):
            for dev in group:
                dev.workdir.mkdir(parents=True, exist_ok=True)
                if dev.spec.ota and self.ota is not None:
                    self._start_ota(dev, model_dir)
                else:
                    dev.install(model_dir)
                handle = dev.handle
                if dev.telemetry is None or handle is None:
                    continue  # refused: nothing to serve, nothing to report
                uplink.add(
                    dev.device_id,
                    dev.telemetry.outbox,
                    online=self._online_fn(dev),
                    status={"model": handle.manifest.name, "version": dev.version, "profile": dev.profile.name},
                )
                dev.telemetry.on_stored = self._marker(uplink, dev.device_id)
                dev.telemetry.defer = lambda tel, window: self._closed.put((tel, window))
        self._storer = threading.Thread(target=self._store_closed, name="sim-telemetry-store", daemon=True)
        self._storer.start()
        for dev in self.devices:
            if dev.ota is not None:
                dev.ota.start()
        return self

    def _online_fn(self, dev: VirtualDevice) -> Callable[[], bool]:
        return lambda: dev.online(self.sim_time())

    @staticmethod
    def _marker(uplink: SharedUplink, device_id: str) -> Callable[[], None]:
        return lambda: uplink.mark(device_id)

    def _start_ota(self, dev: VirtualDevice, model_dir: Path) -> None:
        from tandem.edge_agent.ota.client import OtaClient, OtaClientConfig

        assert self.ota is not None
        client = OtaClient(
            OtaClientConfig(
                dev.device_id,
                dev.profile.name,
                self.ota.mqtt_url,
                dev.workdir / "ota",
                self.ota.trusted_pem,
                hub_token=self.ota.token,
                watch=self.ota.watch,
                poll_s=self.ota.poll_s,
            ),
            on_switch=dev.swap,
            health=dev.health,
        )
        client.open_store()
        if client.store.active_version is None:
            client.store.install_initial(model_dir)
        active = client.store.active_dir
        assert active is not None, "install_initial leaves an active slot"
        if dev.install(active):
            dev.ota = client

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            subscribed = all(d.ota.wait_subscribed(0) for d in self.devices if d.ota is not None)
            if subscribed and all(u.connected for u in self.uplinks):
                return True
            time.sleep(0.05)
        return False

    def start_serving(self) -> None:
        """Worker threads begin serving; simulated time restarts at 0."""
        self.t0 = time.monotonic()
        everyone: list[Any] = [*self.devices, *self.external]
        shards = [everyone[i :: self.config.workers] for i in range(self.config.workers)]
        for i, shard in enumerate(shards):
            if shard:
                t = threading.Thread(target=self._work, args=(shard,), name=f"sim-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop_serving(self) -> None:
        """Stop the workers, store every closed window, then close and store each device's open one."""
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._threads = []
        self._closed.join()
        for dev in self.devices:
            if dev.telemetry is not None:
                dev.telemetry.flush()
        self._closed.join()

    def _store_closed(self) -> None:
        """One thread pays every outbox's fsync, in the order windows closed."""
        while True:
            item = self._closed.get()
            try:
                if item is None:
                    return
                tel, window = item
                try:
                    tel.store_now(window)
                except Exception:  # a full disk must not stop the fleet; the window is lost, and counted
                    log.exception("telemetry window store failed")
            finally:
                self._closed.task_done()

    def run_for(self, seconds: float) -> None:
        self.start_serving()
        self._stop.wait(seconds)
        self.stop_serving()

    def _work(self, shard: list[Any]) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            now = self.sim_time()
            soonest = now + 0.05
            for dev in shard:
                if dev.next_at <= now:
                    at = dev.next_at
                    try:
                        outcome = dev.serve(at)
                    except Exception:  # one broken device must not stop its shard
                        log.exception("device failed device=%s", dev.device_id)
                        outcome = None
                    if outcome is not None:
                        self.recorder.add(at, outcome, lag_s=max(0.0, self.sim_time() - at))
                    dev.next_at = (
                        at + float(dev.rng.exponential(1.0 / dev.spec.rate_hz))
                        if dev.spec.rate_hz > 0
                        else float("inf")
                    )
                    if self._stop.is_set():
                        break
                soonest = min(soonest, dev.next_at)
            if now >= next_tick:
                next_tick = now + 0.2
                for dev in shard:
                    if dev.telemetry is not None:
                        try:
                            dev.telemetry.tick()
                        except Exception:
                            log.exception("telemetry tick failed device=%s", dev.device_id)
            delay = soonest - self.sim_time()
            if delay > 0:
                self._stop.wait(min(delay, 0.05))

    def backlog(self, until: float) -> float:
        """Requests offered by `until` but not yet served: a device behind its schedule owes
        (until - next_at) x rate of them (Poisson arrivals: the expected count)."""
        return sum(
            max(0.0, until - d.next_at) * d.spec.rate_hz
            for d in self.devices
            if d.spec.rate_hz > 0 and d.next_at != float("inf")
        )

    def delivered(self) -> int:
        return int(self.recorder.summary()["requests"])

    def sent_windows(self) -> int:
        return sum(d.telemetry.sent for d in self.devices if d.telemetry is not None)

    def pending_windows(self) -> int:
        return sum(u.pending() for u in self.uplinks)

    def wait_drained(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pending_windows() == 0:
                return True
            for u in self.uplinks:
                u.mark_all()
            time.sleep(0.1)
        return self.pending_windows() == 0

    def close(self) -> None:
        if self._threads:
            self.stop_serving()
        for dev in self.devices:
            if dev.ota is not None:
                dev.ota.stop()
                dev.ota = None
        if self._storer is not None:
            self._closed.put(None)
            self._storer.join(10)
            self._storer = None
        for u in self.uplinks:
            u.stop()
        for dev in self.devices:
            dev.close()
        for c in self._channels:
            c.close()
        if self._owns_pool:
            self.pool.close()
