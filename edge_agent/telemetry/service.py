"""TelemetryService: the agent's one telemetry object (aggregate -> outbox -> MQTT).

`record` is called once per answered request from any thread; a ticker thread
closes windows on time. Closed windows go to the disk outbox before anything is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_agent.telemetry.outbox import DEFAULT_MAX_ROWS, Outbox
from edge_agent.telemetry.publisher import PublisherConfig, TelemetryPublisher
from edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig
from protocols.topics import check_device_id

log = logging.getLogger(__name__)

OUTBOX_FILENAME = "telemetry_outbox.sqlite"


class TelemetryService:
    """Windows of this device's answered requests, delivered to the hub at least once."""

    def __init__(self, mqtt_url: str, device_id: str, manifest: Any, data_dir: str | Path, *,
                 window_s: float = 10.0, max_requests: int = 10_000, profile: str = "",
                 tags: Mapping[str, str] | None = None, variant: str = "", input_every: int = 1,
                 outbox_max_rows: int = DEFAULT_MAX_ROWS, publisher: PublisherConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`manifest` is a protocols Manifest (or a ModelInfo); its drift_reference gives the bin edges."""
        check_device_id(device_id)
        self.device_id = device_id
        model = manifest if isinstance(manifest, ModelInfo) else ModelInfo.from_manifest(manifest, variant)
        self._clock = clock
        self._lock = threading.Lock()
        self.window_config = WindowConfig(window_s=window_s, max_requests=max_requests, input_every=input_every)
        self.aggregator = WindowAggregator(device_id, model, profile=profile, tags=tags, config=self.window_config,
                                           now=clock())
        self.outbox = Outbox(Path(data_dir) / OUTBOX_FILENAME, outbox_max_rows)
        pub_config = publisher or PublisherConfig(mqtt_url=mqtt_url)
        self.publisher = TelemetryPublisher(pub_config, self.outbox, device_id,
                                            status_info={"model": model.name, "version": model.version,
                                                         "profile": profile})
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.windows_closed = 0

    def record(self, source: str, latency_ms: float, confidence: float | Sequence[float] | np.ndarray | None = None,
               label: int | Sequence[int] | np.ndarray | None = None,
               inputs: Mapping[str, np.ndarray] | np.ndarray | None = None) -> None:
        """Count one answered request (source: edge, cloud, edge-degraded or error)."""
        with self._lock:
            full = self.aggregator.record(source, latency_ms, confidence, label, inputs)
            if full:
                self._close_locked()

    def flush(self) -> int | None:
        """Close the open window now; returns its sequence (None if it was empty)."""
        with self._lock:
            return self._close_locked()

    def _close_locked(self) -> int | None:
        window = self.aggregator.close(self._clock())
        if window is None:
            return None
        seq = self.outbox.append(window)
        self.windows_closed += 1
        self.publisher.wake()
        log.debug("telemetry window closed device=%s seq=%d requests=%d", self.device_id, seq,
                  self.aggregator.requests)
        return seq

    def start(self) -> "TelemetryService":
        self.publisher.start()
        self._ticker = threading.Thread(target=self._tick, name=f"telemetry-tick-{self.device_id}", daemon=True)
        self._ticker.start()
        log.info("telemetry started device=%s window_s=%s pending=%d last_seq=%d", self.device_id,
                 self.window_config.window_s, len(self.outbox), self.outbox.last_sequence)
        return self

    def _tick(self) -> None:
        step = min(0.5, self.window_config.window_s / 4)
        while not self._stop.wait(step):
            try:
                with self._lock:
                    if self.aggregator.due(self._clock()):
                        self._close_locked()
            except Exception:  # e.g. disk full: keep the agent serving, try again next tick
                log.exception("telemetry window close failed device=%s", self.device_id)

    def stop(self, flush: bool = True, drain_timeout_s: float = 2.0) -> None:
        """Close the open window, give the publisher `drain_timeout_s` to deliver, then stop."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
            self._ticker = None
        try:
            if flush:
                self.flush()
                if self.publisher.connected:
                    self.publisher.wait_drained(drain_timeout_s)
        finally:
            self.publisher.stop()
            self.outbox.close()
        log.info("telemetry stopped device=%s", self.device_id)

    def __enter__(self) -> "TelemetryService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
