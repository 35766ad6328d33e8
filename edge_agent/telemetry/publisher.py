"""Moves outbox messages to the broker: paho-mqtt 2.x, MQTT 5, QoS 1, persistent session.

A message leaves the outbox only when the broker's PUBACK for it arrives; the outbox
hands out the most important class first, each row to the topic of its kind. paho's
callbacks only enqueue; the sender thread owns the mid -> sequence map and the
outbox deletes, so no lock is held across paho's own mutexes and no fsync runs on
paho's network thread. /status is retained "online"; the last will says "offline"; both carry (boot, conn) so the
hub orders them without trusting clocks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tandem.edge_agent.telemetry.outbox import Outbox
from tandem.protocols.mqtt_client import set_reconnect_delay, stop_loop
from tandem.protocols.mqtt_props import publish_properties
from tandem.protocols.telemetry_codec import STATUS_OFFLINE, STATUS_ONLINE, encode_status
from tandem.protocols.tls import TlsFiles, configure_mqtt_client
from tandem.protocols.resend import ResendDecodeError, decode_resend
from tandem.protocols.topics import STATUS, device_topic, status_topic, telemetry_resend_topic

log = logging.getLogger(__name__)

LOOP_STOP_S = 1.0  # at least this long for paho's thread to write DISCONNECT and end (milliseconds when healthy)


@dataclass(frozen=True)
class PublisherConfig:
    """MQTT session settings; reconnect_max_s is low so an agent is back seconds after the broker."""

    mqtt_url: str
    client_id: str = ""  # default tandem-agent-<device>; must be stable for the session
    session_expiry_s: int = 7 * 24 * 3600  # clean_start=False alone does not keep an MQTT 5 session
    keepalive_s: int = 10
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 2.0
    max_inflight: int = 20  # windows handed to paho at once (mosquitto's default receive max)
    tls: TlsFiles | None = None  # mutual TLS (mqtts://); None: plain text, development only
    connect_timeout_s: float = 5.0  # one TCP connect + TLS handshake attempt (paho's default)


class TelemetryPublisher:
    """Publishes everything in `outbox`, oldest first; call `wake()` after an append."""

    def __init__(
        self, config: PublisherConfig, outbox: Outbox, device_id: str, status_info: dict[str, Any] | None = None
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.device_id = device_id
        self._topics: dict[str, str] = {}  # kind -> this device's topic
        self._status_topic = status_topic(device_id)
        self._status_info = dict(status_info or {})
        # The order of this agent's statuses, which the hub follows instead of wall time: boot (start time, ms)
        # and connection number; the will of connection n is set before it connects, the next one's after it drops.
        self._boot = int(time.time() * 1000)
        self._conn = 1
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._inflight: dict[int, int] = {}  # mid -> outbox row (sender thread only)
        self._thread: threading.Thread | None = None
        self.acked = 0
        self.connects = 0
        self._resends: queue.SimpleQueue[tuple[bytes, float]] = queue.SimpleQueue()
        self.clock_offset_s: float | None = None  # hub clock minus ours, from the hub's last resend request
        self._client = self._make_client()
        self._host, self._port = configure_mqtt_client(
            self._client, config.mqtt_url, config.tls, f"telemetry publisher (device {device_id})"
        )

    def _make_client(self) -> mqtt.Client:
        client_id = self.config.client_id or f"tandem-agent-{self.device_id}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(self.config.max_inflight)
        client.connect_timeout = self.config.connect_timeout_s
        set_reconnect_delay(client, self.config.reconnect_min_s, self.config.reconnect_max_s)
        client.will_set(
            self._status_topic,
            self._status(STATUS_OFFLINE),
            qos=1,
            retain=True,
            properties=publish_properties(STATUS, will=True),
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message  # the hub's resend requests (telemetry/resend)
        return client

    def _status(self, state: str) -> bytes:
        # status_info (TelemetryService's) carries its own "boot": the publisher's (boot, conn) order wins,
        # passed once (a duplicate keyword made every TelemetryService fail to start)
        return encode_status(state, self.device_id, **{**self._status_info, "boot": self._boot, "conn": self._conn})

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> "TelemetryPublisher":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self._client.connect_async(
            self._host, self._port, keepalive=self.config.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()  # paho's thread: connects, and reconnects with the capped backoff
        self._thread = threading.Thread(target=self._run, name=f"telemetry-pub-{self.device_id}", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def update_status(self, **info: Any) -> None:
        """Change what /status says (e.g. the model version after an OTA switch) and, when connected,
        republish the retained "online" status now; the last will follows from the next connect."""
        self._status_info.update(info)
        self._client.will_set(
            self._status_topic,
            self._status(STATUS_OFFLINE),
            qos=1,
            retain=True,
            properties=publish_properties(STATUS, will=True),
        )
        if self._connected.is_set():
            self._client.publish(
                self._status_topic,
                self._status(STATUS_ONLINE),
                qos=1,
                retain=True,
                properties=publish_properties(STATUS),
            )

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (every window acknowledged) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) > 0:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        """Say offline (retained), disconnect, stop threads; unsent windows stay in the outbox.

        Returns within `timeout_s` + LOOP_STOP_S whatever the broker or the network does (a paused
        broker, a connect or TLS handshake that hangs): each wait below takes what is left of one deadline.
        """
        deadline = time.monotonic() + timeout_s
        if self._connected.is_set():
            info = self._client.publish(
                self._status_topic,
                self._status(STATUS_OFFLINE),
                qos=1,
                retain=True,
                properties=publish_properties(STATUS),
            )
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        if not stop_loop(self._client, max(LOOP_STOP_S, deadline - time.monotonic())):
            log.warning(
                "telemetry: MQTT network thread still busy after %.1f s (connecting?); left to exit with the "
                "process, unacknowledged windows stay in the outbox device=%s",
                timeout_s + LOOP_STOP_S,
                self.device_id,
            )

    # -- paho callbacks (network thread): record and wake, nothing else ---------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("telemetry connect refused device=%s reason=%s", self.device_id, reason_code)
            return
        self.connects += 1
        client.publish(
            self._status_topic, self._status(STATUS_ONLINE), qos=1, retain=True, properties=publish_properties(STATUS)
        )
        client.subscribe(telemetry_resend_topic(self.device_id), qos=1)  # kept by the persistent session too
        self._connected.set()
        self._wake.set()
        log.info(
            "telemetry connected device=%s session_present=%s", self.device_id, getattr(flags, "session_present", None)
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        self._conn += 1  # the next connection's will must be newer than this connection's online
        client.will_set(
            self._status_topic,
            self._status(STATUS_OFFLINE),
            qos=1,
            retain=True,
            properties=publish_properties(STATUS, will=True),
        )
        if not self._stop.is_set():
            log.info("telemetry disconnected device=%s reason=%s; reconnecting", self.device_id, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: Any) -> None:
        self._resends.put((msg.payload, time.time()))
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acks.put((mid, not reason_code.is_failure))
        self._wake.set()

    # -- sender thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._drain_acks()
                self._drain_resends()
                if self._connected.is_set():
                    self._hand_out()
            except Exception:  # a disk or client error must not kill the sender; retry next round
                log.exception("telemetry sender error device=%s", self.device_id)
                self._stop.wait(0.5)
        self._drain_acks()

    def _drain_resends(self) -> None:
        """Answer the hub's resend requests from the outbox's replay store; note its clock offset."""
        while True:
            try:
                payload, received = self._resends.get_nowait()
            except queue.Empty:
                return
            try:
                req = decode_resend(payload)
            except ResendDecodeError as exc:
                log.warning("bad resend request device=%s error=%s", self.device_id, exc)
                continue
            self.clock_offset_s = req.hub_time - received  # + the one-way delay, which the hub's own stamp bounds
            found, missing = self.outbox.resend(req.sequences)
            log.warning(
                "hub asked for %d windows again device=%s resent=%d gone=%d",
                len(req.sequences),
                self.device_id,
                found,
                missing,
            )

    def _drain_acks(self) -> None:
        while True:
            try:
                mid, ok = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # the retained status message, or an ack for a mid we never mapped
            if ok:
                self.outbox.ack(seq)
                self.acked += 1
            else:
                log.warning("broker refused outbox row device=%s row=%d; will resend", self.device_id, seq)

    def _hand_out(self) -> None:
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for row, _, kind, payload in self.outbox.next_batch(limit=room, exclude=self._inflight.values()):
            topic = self._topics.get(kind) or self._topics.setdefault(kind, device_topic(self.device_id, kind))
            info = self._client.publish(topic, payload, qos=1, properties=publish_properties(kind))
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                break
            # NO_CONN: paho keeps the message and sends it after the reconnect (same mid).
            self._inflight[info.mid] = row
