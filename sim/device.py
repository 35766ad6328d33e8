"""A virtual device: the agent's real cores with its hardware emulated.

Per request: stream -> shared session (through the agent's MicroBatcher) -> the
agent's ConfidencePolicy -> when not confident, the agent's FallbackClient (own
CircuitBreaker, deadline, retries) to the hub's v2 gRPC -> the agent's
WindowAggregator -> its own SQLite Outbox (own sequence numbers). Optionally the
agent's OtaClient (A/B store, verify, self-test, health watch) hot-swaps its model.
Edge compute time is emulated from the host's measurement (sim.emulation), not slept.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.errors import FallbackUnavailable, ModelLoadError
from tandem.edge_agent.fallback import FallbackClient
from tandem.edge_agent.ota.machine import HealthFigures
from tandem.edge_agent.policy import ConfidencePolicy
from tandem.edge_agent.telemetry.outbox import Outbox
from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig
from tandem.hardware_profiles import Profile
from tandem.sim.emulation import Connectivity, ModelRefused, emulated_latency_ms, percentile
from tandem.sim.sessions import ModelHandle, SessionPool
from tandem.sim.streams import DeviceStream

log = logging.getLogger(__name__)

AGENT_VERSION = "tandem-sim"


class ChannelFallback(FallbackClient):
    """The agent's FallbackClient over a gRPC channel shared by several virtual devices.

    Retry, deadline and breaker logic are FallbackClient's own; only the channel is
    shared (one TCP connection per group of devices instead of one per device).
    """

    def __init__(
        self, url: str, stub: Any, *, deadline_ms: float, breaker: CircuitBreaker, max_attempts: int = 2
    ) -> None:
        super(FallbackClient, self).__init__(url, deadline_ms, breaker, max_attempts)  # the core, not a new channel
        self._channel = None
        self._stub = stub

    def close(self) -> None:
        """The channel belongs to the fleet."""


@dataclass(frozen=True)
class DeviceSpec:
    """What a scenario says about one device."""

    device_id: str
    profile: Profile
    rate_hz: float = 2.0
    rows: int = 1
    tags: dict[str, str] = field(default_factory=dict)
    connectivity: Connectivity = field(default_factory=Connectivity)
    ota: bool = False
    seed: int = 0
    process: bool = False  # served by a real tandem-agent process (sim.agent_proc), not emulated


@dataclass(frozen=True)
class Outcome:
    """One answered request, for the fleet's metrics."""

    device_id: str
    profile: str
    source: str  # edge, cloud, edge-degraded, error
    latency_ms: float
    rows: int
    correct: int
    version: str


class DeviceTelemetry:
    """The agent's window aggregator and outbox for one device; `tick` closes due windows into the outbox."""

    def __init__(
        self,
        device_id: str,
        model: ModelInfo,
        outbox_path: Path,
        *,
        profile: str,
        tags: dict[str, str],
        window_s: float,
        clock: Callable[[], float] = time.time,
        phase_s: float = 0.0,
    ) -> None:
        """`phase_s` shortens the first window, so a fleet started at once does not close every window together."""
        self._clock = clock
        self._lock = threading.Lock()
        self.config = WindowConfig(window_s=window_s)
        self.profile = profile
        self.tags = tags
        self.aggregator = WindowAggregator(
            device_id, model, profile=profile, tags=tags, config=self.config, now=clock() - phase_s
        )
        self.outbox = Outbox(outbox_path)
        self.on_stored: Callable[[], None] = lambda: None
        # Where closed windows go: None stores on the caller's thread; the fleet hands them to its
        # store thread instead (the outbox fsyncs, as the agent's ticker does off the request path).
        self.defer: Callable[["DeviceTelemetry", Any], None] | None = None

    def record(
        self, source: str, latency_ms: float, confidence: np.ndarray, label: np.ndarray, inputs: dict[str, np.ndarray]
    ) -> None:
        with self._lock:
            full = self.aggregator.record(source, latency_ms, confidence, label, inputs)
            window = self.aggregator.close(self._clock()) if full else None
        if window is not None:
            self._store(window)

    def tick(self) -> bool:
        """Close the open window when due; True when one was stored."""
        now = self._clock()
        with self._lock:
            window = self.aggregator.close(now) if self.aggregator.due(now) else None
        return self._store(window)

    def switch_model(self, model: ModelInfo) -> None:
        """A new version: close the old version's window, count the rest under the new one."""
        now = self._clock()
        with self._lock:
            window = self.aggregator.close(now)
            self.aggregator = WindowAggregator(
                self.aggregator.device_id, model, profile=self.profile, tags=self.tags, config=self.config, now=now
            )
        self._store(window)

    def flush(self) -> None:
        with self._lock:
            window = self.aggregator.close(self._clock())
        self._store(window)

    def _store(self, window: Any) -> bool:
        if window is None:
            return False
        if self.defer is not None:
            self.defer(self, window)
        else:
            self.store_now(window)
        return True

    def store_now(self, window: Any) -> None:
        self.outbox.append(window)
        self.on_stored()

    @property
    def sent(self) -> int:
        """Windows this device has produced (numbered in its outbox)."""
        return self.outbox.last_sequence

    def close(self) -> None:
        self.outbox.close()


class VirtualDevice:
    """One device of the fleet; `serve(t)` answers one request at simulated time t (seconds)."""

    def __init__(
        self,
        spec: DeviceSpec,
        pool: SessionPool,
        stream: DeviceStream,
        policy: ConfidencePolicy,
        fallback: FallbackClient,
        hub_model: str,
        workdir: Path,
        window_s: float,
    ) -> None:
        self.spec = spec
        self.device_id = spec.device_id
        self.profile = spec.profile
        self.pool = pool
        self.stream = stream
        self.policy = policy
        self.fallback = fallback
        self.hub_model = hub_model
        self.workdir = workdir
        self.window_s = window_s
        self.rng = np.random.default_rng(spec.seed + 7919)
        self.handle: ModelHandle | None = None
        self.refused: str | None = None
        self.telemetry: DeviceTelemetry | None = None
        self.ota: Any = None
        self.switches = 0
        self.next_at = float(self.rng.uniform(0, 1.0 / spec.rate_hz)) if spec.rate_hz > 0 else float("inf")
        self._health_lock = threading.Lock()
        self._health = _HealthCounter()

    # -- model -----------------------------------------------------------------------

    def install(self, model_dir: Path) -> bool:
        """Serve `model_dir`; False (and `refused` says why) when it does not fit this hardware."""
        try:
            handle = self.pool.open(model_dir, self.profile)
        except ModelRefused as exc:
            self.refused = str(exc)
            log.warning("model refused device=%s reason=%s", self.device_id, exc)
            return False
        self._serve_handle(handle)
        return True

    def swap(self, model_dir: Path) -> None:
        """The OTA client's on_switch: raise if the new model cannot be served (the update then fails)."""
        try:
            handle = self.pool.open(model_dir, self.profile)
        except ModelRefused as exc:
            raise ModelLoadError(str(exc)) from exc
        self._serve_handle(handle)
        self.switches += 1

    def _serve_handle(self, handle: ModelHandle) -> None:
        info = ModelInfo.from_manifest(handle.manifest, handle.variant.id)
        if self.telemetry is None:
            self.telemetry = DeviceTelemetry(
                self.device_id,
                info,
                self.workdir / "telemetry_outbox.sqlite",
                profile=self.profile.name,
                tags=self.spec.tags,
                window_s=self.window_s,
                phase_s=float(self.rng.uniform(0, self.window_s)),
            )
        else:
            self.telemetry.switch_model(info)
        self.handle = handle
        self.refused = None

    @property
    def version(self) -> str | None:
        return self.handle.version if self.handle is not None else None

    # -- serving ---------------------------------------------------------------------

    def online(self, t: float) -> bool:
        return self.spec.connectivity.online(t)

    def serve(self, t: float) -> Outcome | None:
        """One request of this device's stream; None when it has no model it can run."""
        handle = self.handle
        if handle is None or self.telemetry is None:
            return None
        x, y = self.stream.next(t, self.spec.rows)
        name = handle.variant.inputs[0].name
        try:
            out = handle.run(x)
        except Exception as exc:  # a runtime or overload error answers "error", never stops the fleet
            log.debug("edge run failed device=%s error=%s", self.device_id, exc)
            self.telemetry.record("error", 0.0, np.zeros(0, np.float32), np.zeros(0, np.int64), {})
            self._count("error", 0.0)
            return Outcome(self.device_id, self.profile.name, "error", 0.0, len(x), 0, handle.version)
        latency = edge_ms = emulated_latency_ms(handle.shared.host_ms_per_row, len(x), self.profile, self.rng)
        scores = self.policy.score_array(out)
        labels, conf, source = scores.labels, scores.confidence, "edge"
        if not scores.all_confident:
            source = "edge-degraded"
            if self.online(t):
                try:
                    res = self.fallback.infer(
                        self.hub_model,
                        {name: x},
                        device_id=self.device_id,
                        model_version=handle.version,
                        edge_label=int(labels[0]),
                        edge_confidence=float(conf[0]),
                    )
                    cloud = self.policy.score_array(next(iter(res.outputs.values())))
                    labels, source = cloud.labels, "cloud"
                    latency += res.latency_ms
                except FallbackUnavailable:
                    pass
        self.telemetry.record(source, latency, conf, labels, {name: x})
        self._count(source, edge_ms)
        return Outcome(
            self.device_id, self.profile.name, source, latency, len(x), int((labels == y).sum()), handle.version
        )

    def _count(self, source: str, latency: float) -> None:
        with self._health_lock:
            self._health.add(source, latency)

    def health(self) -> HealthFigures:
        """The OTA client's health probe: figures since the previous call.

        Its p95 is the model's own (emulated) compute time: the fallback round trip is the
        hub's, and would make a version's latency depend on how many of its answers fell back."""
        with self._health_lock:
            counter, self._health = self._health, _HealthCounter()
        return counter.figures()

    def close(self) -> None:
        if self.ota is not None:
            self.ota.stop()
            self.ota = None
        if self.telemetry is not None:
            self.telemetry.close()


@dataclass
class _HealthCounter:
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, source: str, latency: float) -> None:
        self.requests += 1
        self.errors += source == "error"
        self.fallbacks += source in ("cloud", "edge-degraded")
        if len(self.latencies) < 10_000:
            self.latencies.append(latency)

    def figures(self) -> HealthFigures:
        return HealthFigures(self.requests, self.errors, self.fallbacks, percentile(self.latencies, 95))
