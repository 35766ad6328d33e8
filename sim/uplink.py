"""Telemetry from many virtual devices over one MQTT connection (QoS 1), each with its own outbox.

The agent's TelemetryPublisher costs a paho client and two threads per device; a
thousand of those do not fit two cores. This carries the same contract for a group
of devices: every device keeps its own Outbox (own sequence numbers), windows go out
on that device's own telemetry topic, and leave the outbox only on the broker's
PUBACK. On a reconnect everything unacknowledged is sent again; the hub is
idempotent on (device, sequence).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tandem.edge_agent.telemetry.outbox import Outbox
from tandem.protocols.mqtt_client import set_reconnect_delay
from tandem.protocols.mqtt_props import publish_properties
from tandem.protocols.telemetry_codec import STATUS_ONLINE, encode_status
from tandem.protocols.topics import STATUS, TELEMETRY, parse_mqtt_url, status_topic, telemetry_topic

log = logging.getLogger(__name__)


@dataclass
class _Member:
    device_id: str
    outbox: Outbox
    online: Callable[[], bool]
    topic: str
    last_handed: int = 0
    acked: int = 0
    status: dict[str, Any] = field(default_factory=dict)


class SharedUplink:
    """Publishes the outboxes of `add`ed devices; `mark(device_id)` after a window is stored.

    Start it (and let it connect) before opening many outboxes: paho waits on its socket
    with select(), which cannot take file descriptors above 1024, and every SQLite outbox
    holds three.
    """

    def __init__(self, mqtt_url: str, name: str, max_inflight: int = 100) -> None:
        self.name = name
        self.max_inflight = max_inflight
        self._host, self._port = parse_mqtt_url(mqtt_url)
        self._members: dict[str, _Member] = {}  # added from the fleet's thread, read by the sender: copy to iterate
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._inflight: dict[int, tuple[str, int]] = {}  # mid -> (device, seq); sender thread only
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._reconnected = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0
        self.acked = 0
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tandem-sim-{name}", protocol=mqtt.MQTTv5
        )
        self._client.max_inflight_messages_set(max_inflight)
        set_reconnect_delay(self._client, 0.2, 2.0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *a: self._connected.clear()
        self._client.on_publish = self._on_publish

    def add(
        self,
        device_id: str,
        outbox: Outbox,
        online: Callable[[], bool] = lambda: True,
        status: dict[str, Any] | None = None,
    ) -> None:
        member = _Member(device_id, outbox, online, telemetry_topic(device_id), status=dict(status or {}))
        self._members[device_id] = member
        if self._connected.is_set():  # joined after the connect: say online now (a reconnect says it again)
            self._client.publish(
                status_topic(device_id),
                encode_status(STATUS_ONLINE, device_id, **member.status),
                qos=1,
                retain=True,
                properties=publish_properties(STATUS),
            )
        self.mark(device_id)

    def mark(self, device_id: str) -> None:
        with self._dirty_lock:
            self._dirty.add(device_id)
        self._wake.set()

    def mark_all(self) -> None:
        with self._dirty_lock:
            self._dirty.update(list(self._members))
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def pending(self) -> int:
        """Windows not yet acknowledged, over all members."""
        return sum(len(m.outbox) for m in list(self._members.values()))

    def start(self) -> "SharedUplink":
        self._client.connect_async(self._host, self._port, keepalive=10)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name=f"sim-uplink-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        self._acks.put((mid, not reason_code.is_failure))
        self._wake.set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("uplink connect refused name=%s reason=%s", self.name, reason_code)
            return
        self.connects += 1
        self._reconnected.set()
        self._connected.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            try:
                if self._reconnected.is_set():
                    self._reconnected.clear()
                    self._restart()
                self._drain_acks()
                if self._connected.is_set():
                    self._hand_out()
            except Exception:  # a disk or client error must not stop the fleet's telemetry
                log.exception("uplink error name=%s", self.name)
                self._stop.wait(0.5)
        self._drain_acks()

    def _restart(self) -> None:
        """(Re)connected: say every device is online and send everything unacknowledged again."""
        self._inflight.clear()
        for m in list(self._members.values()):
            m.last_handed = 0
            self._client.publish(
                status_topic(m.device_id),
                encode_status(STATUS_ONLINE, m.device_id, **m.status),
                qos=1,
                retain=True,
                properties=publish_properties(STATUS),
            )
        with self._dirty_lock:
            self._dirty.update(list(self._members))

    def _drain_acks(self) -> None:
        while True:
            try:
                mid, ok = self._acks.get_nowait()
            except queue.Empty:
                return
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # a status message, or a send from before the reconnect
            member = self._members[entry[0]]
            if ok:
                member.outbox.ack(entry[1])
                member.acked += 1
                self.acked += 1
            else:
                member.last_handed = min(member.last_handed, entry[1] - 1)
                self.mark(member.device_id)

    def _hand_out(self) -> None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        keep: set[str] = set()
        for device_id in dirty:
            room = self.max_inflight - len(self._inflight)
            member = self._members[device_id]
            if room <= 0 or not member.online():
                keep.add(device_id)
                continue
            rows = member.outbox.pending(after=member.last_handed, limit=room)
            for seq, payload in rows:
                info = self._client.publish(member.topic, payload, qos=1, properties=publish_properties(TELEMETRY))
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    keep.add(device_id)
                    break
                self._inflight[info.mid] = (device_id, seq)
                member.last_handed = seq
            if len(rows) == room:
                keep.add(device_id)
        if keep:
            with self._dirty_lock:
                self._dirty |= keep
