"""Device presence: agents appear in the device registry from what they send over MQTT.

An agent's retained `/status` ("online", with model, version, profile) registers it or
updates what it runs, and marks it online while connected; its last will (or a clean
stop) marks it offline. Statuses are ordered by the agent's (boot, connection) and never
by wall time, so a will delivered late cannot override a newer online (and a stale will of
an earlier boot is ignored). Every telemetry window it sends counts as a heartbeat. Heartbeats
are batched (one UPDATE per flush, not one per window), so 20,000 devices at one window
per 10 s cost a few statements a second. `plan_status` is the pure rule; `DevicePresence`
is the MQTT shell, started as a hub service.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, TypeGuard

import paho.mqtt.client as mqtt

from tandem.cloud_hub.storage.outage import FailureLog
from tandem.cloud_hub.devices import DeviceRegistry, PresenceKey
from tandem.cloud_hub.errors import HubError
from tandem.protocols.mqtt_client import disconnect_and_stop, set_reconnect_delay
from tandem.protocols.telemetry_codec import STATUS_ONLINE, TelemetryDecodeError, decode_status
from tandem.protocols.tls import configure_mqtt_client
from tandem.protocols.topics import STATUS, TopicError, all_devices, parse_topic

log = logging.getLogger(__name__)
_failures = FailureLog(log)

UNKNOWN_AGENT_VERSION = "unknown"


@dataclass(frozen=True)
class StatusAction:
    """What one status message asks of the registry."""

    kind: str  # "register" | "heartbeat" | "offline" | "ignore"
    device_id: str
    profile: str | None = None
    agent_version: str | None = None
    tags: dict[str, str] | None = None
    model_name: str | None = None
    model_version: str | None = None
    reason: str = ""
    key: PresenceKey | None = None  # the status's order (boot, connection, offline)


def presence_key(status: dict[str, Any]) -> PresenceKey | None:
    """(boot, connection, 1 if offline) from an agent's status; None when it carries no order (older agents)."""
    boot, conn = status.get("boot"), status.get("conn")
    if not (_count(boot) and _count(conn)):
        return None
    return (boot, conn, 0 if status.get("state") == STATUS_ONLINE else 1)


def _count(value: object) -> TypeGuard[int]:
    """A non-negative int that is not a bool (JSON's true would pass isinstance(int))."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def plan_status(device_id: str, status: dict[str, Any], registered: bool) -> StatusAction:
    """Decide what an online/offline status (or last will) does to the registry."""
    key = presence_key(status)
    if status.get("state") != STATUS_ONLINE:
        if not registered:
            return StatusAction("ignore", device_id, reason="offline status of an unregistered device")
        return StatusAction("offline", device_id, key=key)
    model = status.get("model") if isinstance(status.get("model"), str) else None
    version = status.get("version") if isinstance(status.get("version"), str) else None
    agent_version = status.get("agent_version") if isinstance(status.get("agent_version"), str) else None
    if registered:  # keep what an operator or the agent's own REST registration set (tags, profile)
        return StatusAction(
            "heartbeat", device_id, agent_version=agent_version, model_name=model, model_version=version, key=key
        )
    profile = status.get("profile")
    if not isinstance(profile, str) or not profile:
        return StatusAction("ignore", device_id, reason="unregistered device without a profile in its status")
    tags = status.get("tags") if isinstance(status.get("tags"), dict) else None
    return StatusAction(
        "register",
        device_id,
        profile=profile,
        agent_version=agent_version or UNKNOWN_AGENT_VERSION,
        tags=tags,
        model_name=model,
        model_version=version,
        key=key,
    )


def apply_status(devices: DeviceRegistry, action: StatusAction) -> None:
    """Carry out `action` on the registry; a bad field is logged, never raised to the MQTT thread."""
    try:
        if action.kind == "register":
            devices.register(
                action.device_id,
                action.profile or "",
                action.agent_version or UNKNOWN_AGENT_VERSION,
                action.tags,
                model_name=action.model_name,
                model_version=action.model_version,
            )
        elif action.kind == "heartbeat":
            if not devices.set_presence(action.device_id, "online", action.key):
                return  # an older online than what the registry holds (e.g. replayed after the will)
            devices.heartbeat(
                action.device_id,
                model_name=action.model_name,
                model_version=action.model_version,
                agent_version=action.agent_version,
            )
        elif action.kind == "offline":
            devices.set_presence(action.device_id, "offline", action.key)
        if action.kind == "register":
            devices.set_presence(action.device_id, "online", action.key)
    except HubError as exc:
        log.warning("device status not applied device=%s reason=%s", action.device_id, exc)


class DevicePresence:
    """Hub service: subscribes to every device's retained status; `note_seen` takes telemetry heartbeats."""

    def __init__(self, flush_s: float = 2.0, client_id: str | None = None, watch_status: bool = True) -> None:
        """`watch_status` False: heartbeats only; a hub replica watches statuses only while it holds the
        cluster lease (`start_status_watch` / `stop_status_watch`, cloud_hub/cluster/singletons.py)."""
        self.flush_s = flush_s
        self.watch_status = watch_status
        # clean session and nothing queued for it: a unique id lets several hubs share a broker
        self.client_id = client_id or f"tandem-hub-presence-{uuid.uuid4().hex[:12]}"
        self.devices: DeviceRegistry | None = None
        self.statuses = 0
        self.bad = 0
        self._client: mqtt.Client | None = None
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._hub: Any = None

    # -- HubService -------------------------------------------------------------------

    def start(self, hub: Any) -> None:
        if not hub.mqtt_url:
            raise HubError("device presence needs the hub's MQTT broker")
        self.devices = hub.devices
        self._hub = hub
        hub.presence = self
        if self.watch_status:
            self.start_status_watch()
        self._flusher = threading.Thread(target=self._flush_loop, name="hub-presence", daemon=True)
        self._flusher.start()
        log.info("device presence started mqtt=%s statuses=%s", hub.mqtt_url, self.watch_status)

    def start_status_watch(self) -> None:
        """Subscribe to every device's retained status (registering devices from it); idempotent."""
        if self._client is not None or self._hub is None:
            return
        hub = self._hub
        # MQTT 3.1.1 on purpose: retained statuses need nothing newer, and the embedded broker speaks only 3.1.1
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        host, port = configure_mqtt_client(client, hub.mqtt_url, getattr(hub, "mqtt_tls", None), "device presence")
        set_reconnect_delay(client, 0.2, 2.0)
        client.on_connect = lambda c, userdata, flags, rc, props=None: c.subscribe(all_devices(STATUS), qos=1)
        client.on_message = self._on_message
        client.connect_async(host, port, keepalive=10)
        client.loop_start()
        self._client = client

    def stop_status_watch(self) -> None:
        if self._client is not None:
            disconnect_and_stop(self._client)
            self._client = None

    def stop(self) -> None:
        if self._hub is not None:
            self._hub.presence = None
            self._hub = None
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(5)
        self.flush()
        self.stop_status_watch()

    # -- inputs ---------------------------------------------------------------------------

    def note_seen(self, device_ids: Iterable[str]) -> None:
        """Heartbeats for devices that sent something (e.g. a telemetry batch); flushed in bulk."""
        with self._lock:
            self._pending.update(device_ids)

    def flush(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, set()
        if not pending or self.devices is None:
            return 0
        try:
            return self.devices.touch(pending)
        except Exception as exc:  # the registry must never take the MQTT side down; retry next flush
            _failures.failed("presence flush failed devices=%d", exc, len(pending))
            with self._lock:
                self._pending.update(pending)
            return 0

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            device_id = parse_topic(msg.topic).device_id
            if device_id is None or not msg.payload:  # an empty retained payload clears the topic
                return
            status = decode_status(msg.payload)
        except (TopicError, TelemetryDecodeError) as exc:
            self.bad += 1
            log.warning("bad device status topic=%s reason=%s", msg.topic, exc)
            return
        self.statuses += 1
        assert self.devices is not None
        registered = self.devices.exists(device_id)
        apply_status(self.devices, plan_status(device_id, status, registered))


def wait_registered(devices: DeviceRegistry, device_id: str, timeout_s: float) -> bool:
    """Poll until `device_id` is in the registry (tests, the simulator); bounded in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if devices.exists(device_id):
            return True
        time.sleep(0.05)
    return False
