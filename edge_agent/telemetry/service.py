"""TelemetryService: the agent's one uplink object (aggregate -> classed outbox -> MQTT).

`record` is called once per answered request from any thread; a ticker thread
closes windows on time. Closed windows go to the disk outbox before anything is sent.
The same outbox carries OTA status (`enqueue`, class 0) and hard examples (moved in
batches from a HardExampleQueue on each tick, class 1) ahead of the windows (class 2).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tandem.edge_agent.telemetry.outbox import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_REPLAY_BYTES,
    DEFAULT_REPLAY_S,
    HARD_EXAMPLES,
    ClassQuota,
    Outbox,
    OutboxError,
)
from tandem.edge_agent.telemetry.publisher import LOOP_STOP_S, PublisherConfig, TelemetryPublisher
from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import STATUS_ONLINE, TelemetryWindow, encode_status
from tandem.protocols import topics
from tandem.protocols.topics import check_device_id

log = logging.getLogger(__name__)

OUTBOX_FILENAME = "telemetry_outbox.sqlite"
MAX_UNSTORED = (
    1000  # closed windows held in memory while the disk fails (2.7 h of 10 s windows); beyond, the oldest are lost
)
HARD_EXAMPLE_BATCH = 64  # moved into the outbox per tick, in one transaction (one fsync)
UNKNOWN_AGENT_VERSION = "unknown"
# stop(): the ticker's last round, then the offline status + DISCONNECT (publisher.stop's own bound)
TICKER_JOIN_S = 2.0
PUBLISHER_STOP_S = 2.0
STOP_SLACK_S = TICKER_JOIN_S + PUBLISHER_STOP_S + LOOP_STOP_S


def agent_version() -> str:
    """The installed tandem package's version (what the hub's registry shows), or "unknown" from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tandem")
    except PackageNotFoundError:
        return UNKNOWN_AGENT_VERSION


# Names this agent process in its status: the hub repeats unanswered OTA commands to a device that
# came back (a new boot, or after an offline), not to one that only republished its status.
BOOT_ID = f"{os.getpid()}-{int(time.time() * 1000)}"


SELECTION_KEYS = ("variant", "runtime", "tier", "placement", "reason")
MAX_SELECTION_REASON = 400


def selection_summary(selection: Mapping[str, Any] | None) -> dict[str, Any]:
    """The capability-probing choice (edge_agent.model LoadedModel.selection) as status carries it:
    which variant on which runtime and placement, and why; the probe and the attempts stay local."""
    out = {k: selection[k] for k in SELECTION_KEYS if selection and k in selection}
    if isinstance(out.get("reason"), str):
        out["reason"] = out["reason"][:MAX_SELECTION_REASON]
    return out


def status_info(
    device_id: str,
    model: ModelInfo,
    profile: str,
    tags: Mapping[str, str] | None,
    selection: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the retained /status says: enough for the hub to register the device from MQTT alone
    (profile, tags for rollout selection, agent and model versions) and which variant the agent
    chose and why. Tags that would push the status past MAX_STATUS_BYTES are left out (the hub
    would refuse the whole status)."""
    info: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "profile": profile,
        "agent_version": agent_version(),
        "tags": dict(tags or {}),
        "boot": BOOT_ID,
        "selection": selection_summary(selection),
    }
    if len(encode_status(STATUS_ONLINE, device_id, **info)) > limits.MAX_STATUS_BYTES:
        log.warning(
            "status: %d tags make it longer than MAX_STATUS_BYTES=%d; sent without tags device=%s "
            "(register the device's tags over REST instead)",
            len(info["tags"]),
            limits.MAX_STATUS_BYTES,
            device_id,
        )
        info["tags"] = {}
    return info


class TelemetryService:
    """Windows of this device's answered requests, delivered to the hub at least once."""

    def __init__(
        self,
        mqtt_url: str,
        device_id: str,
        manifest: Any,
        data_dir: str | Path,
        *,
        window_s: float = 10.0,
        max_requests: int = 10_000,
        profile: str = "",
        tags: Mapping[str, str] | None = None,
        variant: str = "",
        input_every: int = 1,
        outbox_max_rows: int = DEFAULT_MAX_ROWS,
        outbox_max_bytes: int = DEFAULT_MAX_BYTES,
        outbox_quotas: Mapping[int, ClassQuota] | None = None,
        hard_examples: Any = None,
        selection: Mapping[str, Any] | None = None,
        publisher: PublisherConfig | None = None,
        clock: Callable[[], float] = time.time,
        unstored_max: int = MAX_UNSTORED,
        replay_s: float = DEFAULT_REPLAY_S,
        replay_bytes: int = DEFAULT_REPLAY_BYTES,
    ) -> None:
        """`manifest` is a protocols Manifest (or a ModelInfo); its drift_reference gives the bin edges.

        `hard_examples` (an edge_agent.hard_examples.HardExampleQueue) is drained into the
        outbox's class 1 while that class has room; the queue keeps (and bounds) the rest.
        `selection` (LoadedModel.selection) says in the status which variant was chosen and why.
        `unstored_max`: closed windows held in memory while the outbox cannot be written
        (disk full, read-only, corrupt); past it the oldest is lost, counted, and its sequence
        number skipped so the hub sees the gap.
        `replay_s` / `replay_bytes`: acknowledged windows kept to answer the hub's resend requests.
        """
        check_device_id(device_id)
        self.device_id = device_id
        model = manifest if isinstance(manifest, ModelInfo) else ModelInfo.from_manifest(manifest, variant)
        self._clock = clock
        self._lock = threading.Lock()
        self.window_config = WindowConfig(window_s=window_s, max_requests=max_requests, input_every=input_every)
        self.aggregator = WindowAggregator(
            device_id, model, profile=profile, tags=tags, config=self.window_config, now=clock()
        )
        self.outbox = Outbox(
            Path(data_dir) / OUTBOX_FILENAME,
            outbox_max_rows,
            max_bytes=outbox_max_bytes,
            quotas=outbox_quotas,
            replay_s=replay_s,
            replay_bytes=replay_bytes,
        )
        self.hard_examples = hard_examples
        self._move_lock = threading.Lock()
        pub_config = publisher or PublisherConfig(mqtt_url=mqtt_url)
        self.publisher = TelemetryPublisher(
            pub_config, self.outbox, device_id, status_info=status_info(device_id, model, profile, tags, selection)
        )
        self._append_lock = threading.Lock()
        self._closed_lock = threading.Lock()  # guards _closed and _lost_unstored only (never held across I/O)
        self._closed: deque[TelemetryWindow] = deque(maxlen=max(1, unstored_max))  # closed, not yet in the outbox
        self._lost_unstored = 0  # lost from _closed since the last append: sequence numbers to skip
        self.write_error: str | None = None  # why the outbox cannot be written now (None: it can)
        self.write_failures = 0  # failed outbox writes (windows or hard examples), ever
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.windows_closed = 0
        self.unstored_dropped = 0
        self.hard_examples_moved = 0

    def record(
        self,
        source: str,
        latency_ms: float,
        confidence: float | Sequence[float] | np.ndarray | None = None,
        label: int | Sequence[int] | np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | np.ndarray | None = None,
        budget_spent: bool = False,
        signals: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Count one answered request (source: edge, cloud, edge-degraded or error; `budget_spent`, `signals`: see the window).

        Cheap on the request path: a full window is handed to the ticker thread, which
        pays the outbox's fsync, so no request ever waits on the disk.
        """
        with self._lock:
            full = self.aggregator.record(source, latency_ms, confidence, label, inputs, budget_spent, signals)
            if full:
                self._hand_off(self.aggregator.close(self._clock()))
                self._wake.set()

    def record_agreement(self, values: np.ndarray) -> None:
        """Count the edge's per-row agreement with an answer the hub gave (see the window)."""
        with self._lock:
            self.aggregator.record_agreement(values)

    def record_shadow(self, samples: int, agree: int) -> None:
        """Count one shadow comparison (from a fallback thread, after its request was answered)."""
        with self._lock:
            self.aggregator.record_shadow(samples, agree)

    def switch_model(self, manifest: Any, variant: str = "", selection: Mapping[str, Any] | None = None) -> None:
        """The agent now serves another model version: close the open window, count the next ones under it."""
        model = manifest if isinstance(manifest, ModelInfo) else ModelInfo.from_manifest(manifest, variant)
        with self._lock:
            old = self.aggregator
            self._hand_off(old.close(self._clock()))
            self.aggregator = WindowAggregator(
                self.device_id, model, profile=old.profile, tags=old.tags, config=self.window_config, now=self._clock()
            )
        self._wake.set()
        self.publisher.update_status(
            model=model.name,
            version=model.version,  # the registry sees it at once
            selection=selection_summary(selection),
        )

    def enqueue(self, kind: str, payload: bytes) -> int | None:
        """Store one message for topic `kind` (e.g. topics.OTA_STATUS: class 0, sent before any window).

        Durable before it returns; the row id, or None when the outbox had to drop it.
        """
        row = self.outbox.append_message(kind, payload)
        self.publisher.wake()
        return row

    def move_hard_examples(self, limit: int = HARD_EXAMPLE_BATCH) -> int:
        """Move the oldest hard examples into the outbox (class 1) while its quota has room; how many.

        Outbox first, queue delete second: a crash in between uploads an example twice
        (the receiver dedupes on device and id), never zero times.
        """
        queue = self.hard_examples
        if queue is None:
            return 0
        with self._move_lock:  # the ticker and a caller must not both move the same rows
            return self._move_hard_examples(queue, limit)

    def _move_hard_examples(self, queue: Any, limit: int) -> int:
        room = min(limit, self.outbox.room(HARD_EXAMPLES))
        if room <= 0:
            return 0
        items = queue.peek_uploads(self.device_id, room)
        if not items:
            return 0
        try:  # on failure the examples stay in their queue (nothing lost) and the state turns degraded
            self.outbox.append_many(topics.HARD_EXAMPLES, [payload for _, payload in items])
        except OutboxError as exc:
            self._write_failed(exc)
            raise
        queue.ack([i for i, _ in items])
        self.hard_examples_moved += len(items)
        self.publisher.wake()
        return len(items)

    def register_metrics(self, metrics: Any) -> None:
        """Per outbox class gauges on an AgentMetrics: rows waiting and messages dropped under pressure."""
        from tandem.edge_agent.telemetry.outbox import CLASS_NAMES

        for klass, name in CLASS_NAMES.items():
            metrics.gauge(
                f"tandem_agent_outbox_{name}_rows",
                f"Outbox class {klass} ({name}) rows waiting for the broker's ack.",
                lambda k=klass: self.outbox.depth(k),
            )
            metrics.counter(
                f"tandem_agent_outbox_{name}_dropped_total",
                f"Outbox class {klass} ({name}) messages dropped under pressure (lowest class first).",
                lambda n=name: self.outbox.dropped()[n],
            )
        metrics.gauge("tandem_agent_outbox_bytes", "Payload bytes in the outbox.", lambda: self.outbox.bytes)
        metrics.gauge(
            "tandem_agent_outbox_write_failing",
            "1 while the outbox cannot be written (disk full, read-only, corrupt).",
            lambda: int(self.write_error is not None),
        )
        metrics.counter(
            "tandem_agent_outbox_write_failures_total", "Failed outbox writes since start.", lambda: self.write_failures
        )
        metrics.gauge(
            "tandem_agent_telemetry_unstored",
            "Closed windows held in memory for a failing outbox.",
            lambda: len(self._closed),
        )
        metrics.counter(
            "tandem_agent_telemetry_lost_local_total",
            "Windows lost because the outbox stayed unwritable past unstored_max (their sequence numbers are skipped).",
            lambda: self.unstored_dropped,
        )

    def flush(self) -> int | None:
        """Close the open window now and store it with any handed-off ones; returns the last sequence."""
        with self._lock:
            self._hand_off(self.aggregator.close(self._clock()))
        return self._store_closed()

    def _hand_off(self, window: TelemetryWindow | None) -> None:
        if window is None:
            return
        with self._closed_lock:
            if len(self._closed) == self._closed.maxlen:
                self._closed.popleft()
                self._lost_unstored += 1  # its number is skipped by the next append: the hub sees the gap
                self.unstored_dropped += 1
                if self.unstored_dropped == 1 or self.unstored_dropped % 100 == 0:
                    log.error(
                        "telemetry window lost: outbox unwritable for %d windows device=%s lost_total=%d error=%s",
                        self._closed.maxlen,
                        self.device_id,
                        self.unstored_dropped,
                        self.write_error,
                    )
            self._closed.append(window)

    def _store_closed(self) -> int | None:
        """Append handed-off windows to the outbox in the order they closed.

        A window leaves memory only once its append committed; a failing disk keeps it
        here (bounded by unstored_max) and raises OutboxError to the caller.
        """
        seq = None
        with self._append_lock:  # the fsync runs outside _closed_lock: record() never waits on the disk
            while True:
                with self._closed_lock:
                    if not self._closed:
                        break
                    window, lost = self._closed[0], self._lost_unstored
                try:
                    seq = self.outbox.append(window, lost_before=lost)
                except OutboxError as exc:
                    self._write_failed(exc)
                    raise
                with self._closed_lock:
                    self._lost_unstored -= lost
                    if self._closed and self._closed[0] is window:
                        self._closed.popleft()
                    else:  # _hand_off evicted it as lost while it was being stored: it was not lost
                        self._lost_unstored -= 1
                        self.unstored_dropped -= 1
                self.windows_closed += 1
                log.debug("telemetry window stored device=%s seq=%d", self.device_id, seq)
        if seq is not None:
            self.publisher.wake()
        return seq

    def _write_failed(self, exc: Exception) -> None:
        self.write_failures += 1
        if self.write_error is None:  # logged once per state change, not once per tick
            log.error(
                "telemetry outbox unwritable device=%s error=%s; holding up to %d windows in memory",
                self.device_id,
                exc,
                self._closed.maxlen,
            )
        self.write_error = str(exc)

    def _write_ok(self) -> None:
        if self.write_error is not None:
            log.warning(
                "telemetry outbox writable again device=%s held=%d lost_total=%d",
                self.device_id,
                len(self._closed),
                self.unstored_dropped,
            )
            self.write_error = None

    @property
    def degraded(self) -> str | None:
        """Why this device's telemetry is not being stored now (None: it is)."""
        return f"telemetry outbox unwritable: {self.write_error}" if self.write_error else None

    def start(self) -> "TelemetryService":
        self.publisher.start()
        self._ticker = threading.Thread(target=self._tick, name=f"telemetry-tick-{self.device_id}", daemon=True)
        self._ticker.start()
        log.info(
            "telemetry started device=%s window_s=%s pending=%d last_seq=%d",
            self.device_id,
            self.window_config.window_s,
            len(self.outbox),
            self.outbox.last_sequence,
        )
        return self

    def _tick(self) -> None:
        step = min(0.5, self.window_config.window_s / 4)
        while not self._stop.is_set():
            self._wake.wait(step)
            self._wake.clear()
            try:
                with self._lock:
                    if self.aggregator.due(self._clock()):
                        self._hand_off(self.aggregator.close(self._clock()))
                self._store_closed()
                self.move_hard_examples()
                self._write_ok()
            except OutboxError:  # disk full, read-only, corrupt: counted and logged in _write_failed; retry next tick
                pass
            except Exception:  # anything else: keep the agent serving, retry on the next tick
                log.exception("telemetry window store failed device=%s pending=%d", self.device_id, len(self._closed))

    def stop(self, flush: bool = True, drain_timeout_s: float = 2.0) -> None:
        """Close the open window, give the publisher `drain_timeout_s` to deliver, then stop.

        Bounded whatever the broker does: returns within drain_timeout_s + STOP_SLACK_S (plus the one
        outbox write of the flush). Windows not acknowledged by then stay in the outbox for the next start.
        """
        self._stop.set()
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join(TICKER_JOIN_S)
            self._ticker = None
        try:
            if flush:
                try:
                    self.flush()
                except OutboxError as exc:  # already logged and counted; what memory held is lost with the process
                    log.error(
                        "telemetry stop: %d windows not stored device=%s error=%s",
                        len(self._closed),
                        self.device_id,
                        exc,
                    )
                if self.publisher.connected:
                    self.publisher.wait_drained(drain_timeout_s)
        finally:
            self.publisher.stop(PUBLISHER_STOP_S)
            self.outbox.close()
        log.info("telemetry stopped device=%s", self.device_id)

    def __enter__(self) -> "TelemetryService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
