"""MQTT telemetry ingestion: subscribe (plain or $share), decode with limits, store idempotently, then ack.

paho runs with manual acks: a window's PUBACK goes back to the broker only after the
batch holding it has committed, so a hub crash between receipt and commit makes the
broker redeliver instead of losing it. Bad messages are counted, logged and acked
(a poison message must not come back forever); they never stop ingestion.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tandem.cloud_hub.storage.db import DatabaseUnavailableError
from tandem.cloud_hub.storage.outage import FailureLog
from tandem.cloud_hub.ratelimit import RateLimiter
from tandem.cloud_hub.mqtt_batches import ack_batch, take_batch
from tandem.cloud_hub.telemetry.store import StoredWindow, TelemetryStore
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import TelemetryDecodeError, TelemetryWindow, decode_window
from tandem.protocols.mqtt_client import disconnect_and_stop, set_reconnect_delay
from tandem.protocols.tls import TlsFiles, configure_mqtt_client
from tandem.protocols.topics import TELEMETRY, TopicError, all_devices, parse_topic, shared

log = logging.getLogger(__name__)
_failures = FailureLog(log)

# Called with the windows of a committed batch that were new (not duplicates), and their receipt time.
OnWindows = Callable[[list[tuple[TelemetryWindow, float]]], None]


@dataclass(frozen=True)
class IngestConfig:
    mqtt_url: str
    client_id: str = "tandem-hub-telemetry"  # stable: the broker keeps this session's queue while we are away
    # None (default): a plain subscription. "tandem-hub" (DEFAULT_SHARE_GROUP): $share/tandem-hub/..., so
    # hub replicas split the load -- only on a broker that keeps shared subscriptions across its own
    # restart: Mosquitto 2.0 does not (measured: windows published between its restart and the hub's
    # resubscribe are acked to the agent and dropped), a plain subscription in a persistent session is kept.
    share_group: str | None = None
    session_expiry_s: int = 24 * 3600
    receive_maximum: int = 2000  # unacked windows the broker may have in flight to us
    batch_max: int = 1000
    batch_wait_s: float = 0.05
    keepalive_s: int = 10
    reconnect_max_s: float = 2.0
    cohort_tags: tuple[str, ...] | None = None
    device_rate_per_s: float = limits.DEVICE_TELEMETRY_PER_S  # per-device flood bound; beyond it windows are dropped
    device_burst: int = limits.DEVICE_TELEMETRY_BURST
    tls: TlsFiles | None = None  # the hub's MQTT identity (mqtts://); None: plain text, development only

    @property
    def topic_filter(self) -> str:
        base = all_devices(TELEMETRY)
        return shared(base, self.share_group) if self.share_group else base


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    bad: int = 0
    batches: int = 0
    store_errors: int = 0
    rate_limited: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class TelemetryIngest:
    """One MQTT client and one writer thread."""

    def __init__(
        self,
        config: IngestConfig,
        store: TelemetryStore,
        on_windows: OnWindows | None = None,
        cohort_of: Callable[[TelemetryWindow], str] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.stats = IngestStats()
        self._on_windows = on_windows
        self._cohort_of = cohort_of or (lambda w: "{}")
        self._queue: queue.SimpleQueue[tuple[int, int, str, bytes, int]] = queue.SimpleQueue()
        self._generation = 0  # bumps on every connect: acks for an older connection's mids are skipped
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._writer: threading.Thread | None = None
        self._last_bad_log = 0.0
        # why the store cannot be written now (disk full, locked) and since when; None once a batch commits.
        # Shown on the hub's /healthz: meanwhile messages wait unacknowledged in the broker, nothing is lost.
        self.write_error: str | None = None
        self.write_error_since: float | None = None
        self._limiter = RateLimiter(config.device_rate_per_s, config.device_burst)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        self._host, self._port = configure_mqtt_client(self.client, config.mqtt_url, config.tls, "telemetry ingest")
        set_reconnect_delay(self.client, 0.2, config.reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def start(self) -> "TelemetryIngest":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        props.MaximumPacketSize = limits.MAX_MQTT_PAYLOAD_BYTES + limits.MQTT_PACKET_OVERHEAD_BYTES
        self.client.connect_async(
            self._host, self._port, keepalive=self.config.keepalive_s, clean_start=False, properties=props
        )
        self._writer = threading.Thread(target=self._write_loop, name="telemetry-ingest-writer", daemon=True)
        self._writer.start()
        self.client.loop_start()
        return self

    def stop(self) -> None:
        """Disconnect (unacked windows stay with the broker's session) and stop the writer."""
        self._stop.set()
        disconnect_and_stop(self.client)
        if self._writer is not None:
            self._writer.join(10)
            self._writer = None

    # -- paho thread ------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("telemetry ingest connect refused reason=%s", reason_code)
            return
        self._generation += 1
        client.subscribe(self.config.topic_filter, qos=1)
        log.info(
            "telemetry ingest connected filter=%s session_present=%s",
            self.config.topic_filter,
            getattr(flags, "session_present", None),
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._subscribed.clear()
        if not self._stop.is_set():
            log.info("telemetry ingest disconnected reason=%s; reconnecting", reason_code)

    def _write_failed(self, exc: BaseException) -> None:
        if self.write_error_since is None:
            self.write_error_since = time.time()
        self.write_error = f"{type(exc).__name__}: {exc}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put((self._generation, msg.mid, msg.topic, bytes(msg.payload), msg.qos))

    # -- writer thread ------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            batch = take_batch(self._queue, self.config.batch_max, self.config.batch_wait_s)
            if batch:
                self._process(batch)

    def _process(self, batch: list[tuple[int, int, str, bytes, int]]) -> None:
        now = time.time()
        items: list[StoredWindow] = []
        for _, _, topic, payload, _ in batch:
            self.stats.received += 1
            try:
                device = parse_topic(topic).device_id
                window = decode_window(payload, topic_device=device)
            except (TopicError, TelemetryDecodeError) as exc:
                self.stats.bad += 1
                if now - self._last_bad_log > 5.0:  # rate-limited: a flood of garbage must not flood the log
                    log.warning(
                        "bad telemetry message topic=%r error=%s bad_total=%d", topic[:200], exc, self.stats.bad
                    )
                    self._last_bad_log = now
                continue
            if not self._limiter.allow(window.device_id):
                self.stats.rate_limited += 1
                if now - self._last_bad_log > 5.0:
                    log.warning(
                        "telemetry rate limit device=%s rate=%g/s burst=%d dropped_total=%d",
                        window.device_id,
                        self.config.device_rate_per_s,
                        self.config.device_burst,
                        self.stats.rate_limited,
                    )
                    self._last_bad_log = now
                continue
            items.append(StoredWindow(window, payload, self._cohort_of(window), now))
        while not self._stop.is_set():
            try:
                new = self.store.insert_windows(items) if items else []
                break
            except Exception as exc:  # disk full, locked: keep the batch unacked and retry
                self.stats.store_errors += 1
                self._write_failed(exc)
                if isinstance(exc, DatabaseUnavailableError):  # PostgreSQL away: a line per 30 s, not per second
                    _failures.failed("telemetry store failed batch=%d", exc, len(items))
                else:
                    log.error("telemetry store failed batch=%d error=%s; retrying", len(items), exc)
                self._stop.wait(1.0)
        else:
            return  # stopping without a commit: no acks, the broker redelivers to the next session
        self.write_error = self.write_error_since = None
        self.stats.batches += 1
        fresh = [(it.window, it.received_at) for it, is_new in zip(items, new) if is_new]
        self.stats.stored += len(fresh)
        self.stats.duplicates += len(items) - len(fresh)
        ack_batch(self.client, batch, self._generation)
        if fresh and self._on_windows is not None:
            try:
                self._on_windows(fresh)
            except Exception:
                log.exception("telemetry on_windows callback failed")
