"""The rollout shell: signed commands out over MQTT, device status in, the controller in between.

paho's network thread only enqueues; one worker thread applies statuses, device
online notices (catch-up) and clock ticks to the controller, saves the result and
sends the commands it returns. The rollout state lives in memory and in SQLite
(every change saved before its commands go out).
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tandem.cloud_hub.storage.db import DatabaseUnavailableError
from tandem.cloud_hub.storage.outage import FailureLog
from tandem.cloud_hub.devices import DeviceFilter, DeviceRegistry
from tandem.cloud_hub.errors import ConflictError, InvalidInputError, NotFoundError
from tandem.cloud_hub.keys import ReleaseKey
from tandem.cloud_hub.registry import ModelRegistry
from tandem.cloud_hub.rollouts import controller as ctl
from tandem.cloud_hub.rollouts import quality
from tandem.cloud_hub.rollouts.controller import GatePolicy, Rollout, RolloutError, Send
from tandem.cloud_hub.rollouts.store import RolloutStore
from tandem.cloud_hub.telemetry.rollups import DeviceSum
from tandem.protocols import limits, topics
from tandem.protocols.mqtt_client import disconnect_and_stop, set_reconnect_delay
from tandem.protocols.mqtt_props import publish_properties
from tandem.protocols.ota import OtaCommand, OtaMessageError, decode_status, encode_command
from tandem.protocols.signing import canonical_bytes
from tandem.protocols.telemetry_codec import STATUS_ONLINE
from tandem.protocols.telemetry_codec import decode_status as decode_device_status
from tandem.protocols.tls import TlsFiles, configure_mqtt_client

log = logging.getLogger(__name__)
_failures = FailureLog(log)
HELD_RETRY_S = 0.5  # how often a message held while the database is away is tried again

DriftAlerts = Callable[[str, str], int]  # (model, version) -> open drift alerts
CLOCK_STEP_TOLERANCE_S = 5.0  # wall minus monotonic advance between two ticks that counts as a step
SESSION_EXPIRY_S = 24 * 3600  # the broker keeps the rollouts session (and queues statuses) this long

# (device ids, since) -> their sums per (device, model version) over the windows received since then
DeviceWindows = Callable[[list[str], float], list[DeviceSum]]


@dataclass(frozen=True)
class RolloutServiceConfig:
    mqtt_url: str
    public_url: str  # the hub's HTTP base URL as devices reach it
    tick_s: float = 0.5
    command_ttl_s: float = 3600.0  # a command's deadline; catch-up re-issues fresh ones
    watch_s: float | None = None  # health-watch length sent to devices; None: each device's default
    client_id: str = "tandem-hub-rollouts"
    tls: TlsFiles | None = None  # the hub's MQTT identity (mqtts://); None: plain text, development only
    quality_interval_s: float = 2.0  # how often a waiting wave's quality figures are re-read from telemetry


class RolloutService:
    def __init__(
        self,
        store: RolloutStore,
        registry: ModelRegistry,
        devices: DeviceRegistry,
        key: ReleaseKey,
        config: RolloutServiceConfig,
        drift_alerts: DriftAlerts | None = None,
        clock: Callable[[], float] = time.time,
        device_windows: DeviceWindows | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.registry = registry
        self.devices = devices
        self.key = key
        self.config = config
        self.drift_alerts = drift_alerts
        self.device_windows = device_windows
        self._quality: dict[str, tuple[Any, float, quality.Comparison]] = {}  # rollout -> (query, at, figures)
        self.clock = clock
        self._monotonic = monotonic
        self._last_clocks: tuple[float, float] | None = None  # (wall, monotonic) at the last tick
        self._lock = threading.RLock()
        self._rollouts: dict[str, Rollout] = {r.rollout_id: r for r in store.active()}
        for r in self._rollouts.values():  # loaded after a hub restart: downtime does not count against a wave
            ctl.resume_after_restart(r, clock())
        self._boots: dict[str, str] = {}  # device -> the agent process (status "boot") last seen online
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._worker: threading.Thread | None = None
        self.sent = 0
        self._digests: dict[tuple[str, str], str] = {}
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=mqtt.MQTTv5)
        self._mqtt_addr = configure_mqtt_client(self._client, config.mqtt_url, config.tls, "rollouts")
        self._client.max_queued_messages_set(0)
        set_reconnect_delay(self._client, 0.2, 2.0)
        self._client.on_connect = self._on_connect
        self._client.on_message = lambda c, u, msg: self._inbox.put((msg.topic, bytes(msg.payload)))
        self._client.on_subscribe = lambda *a: self._subscribed.set()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> "RolloutService":
        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = (
            limits.MAX_MQTT_PAYLOAD_BYTES + limits.MQTT_PACKET_OVERHEAD_BYTES
        )  # broker drops bigger
        # persistent, like telemetry's: device statuses sent while the hub is down wait in the broker for it
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(*self._mqtt_addr, keepalive=10, clean_start=False, properties=props)
        self._client.loop_start()
        self._worker = threading.Thread(target=self._run, name="hub-rollouts", daemon=True)
        self._worker.start()
        return self

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._worker is not None:
            self._worker.join(5)
        disconnect_and_stop(self._client)

    # -- operator API (REST and CLI call these) -------------------------------------------

    def create(
        self,
        model: str,
        version: str,
        select: dict[str, str] | None = None,
        waves: list[int] | str = "5,25,100",
        gates: GatePolicy | None = None,
        device_ids: list[str] | None = None,
    ) -> Rollout:
        """Start a rollout of a registered model version to the selected devices, wave 1 now."""
        manifest = self.registry.manifest(model, version)  # NotFoundError if not registered
        targets = set(manifest.get("target_profiles", []))
        select = dict(select or {})
        profile = select.pop("profile", None)
        candidates = self._select(profile, select)
        if device_ids is not None:
            wanted = set(device_ids)
            candidates = [d for d in candidates if d.device_id in wanted]
        chosen = [d.device_id for d in candidates if d.profile in targets]
        if not chosen:
            raise InvalidInputError(
                f"no registered device matches the selection {dict(select, profile=profile)} "
                f"and a target profile of {model} {version} ({', '.join(sorted(targets))})"
            )
        gates = gates or GatePolicy()
        if (gates.control_fraction or gates.control_devices) and self.device_windows is None:
            raise InvalidInputError(
                "a control cohort needs the hub's telemetry to compare against "
                "(telemetry.enabled, env TANDEM_HUB_TELEMETRY_ENABLED)"
            )
        rollout_id = f"ro-{secrets.token_hex(5)}"
        now = self.clock()
        try:
            r, sends, events = ctl.new_rollout(rollout_id, model, version, chosen, ctl.parse_waves(waves), gates, now)
        except RolloutError as exc:
            raise InvalidInputError(str(exc)) from exc
        with self._lock:
            self._rollouts[rollout_id] = r
            self._commit(r, sends, events)
        log.info("rollout created id=%s model=%s version=%s devices=%d", rollout_id, model, version, len(chosen))
        return r

    def get(self, rollout_id: str) -> Rollout:
        with self._lock:
            if rollout_id in self._rollouts:
                return Rollout.from_dict(self._rollouts[rollout_id].to_dict())
        return self.store.get(rollout_id)

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Rollout], int]:
        return self.store.list(status, limit, offset)

    # below, `list` in annotations would name the method above: builtins.list is the type
    def events(self, rollout_id: str, limit: int = 200, after_id: int = 0) -> builtins.list[dict[str, Any]]:
        self.get(rollout_id)
        return self.store.events(rollout_id, limit, after_id)

    def pause(self, rollout_id: str) -> Rollout:
        return self._operate(rollout_id, lambda r, now: ([], ctl.pause(r, now)))

    def resume(self, rollout_id: str) -> Rollout:
        return self._operate(rollout_id, lambda r, now: ([], ctl.resume(r, now)))

    def abort(self, rollout_id: str) -> Rollout:
        return self._operate(rollout_id, lambda r, now: ([], ctl.abort(r, now)))

    def rollback(self, rollout_id: str) -> Rollout:
        return self._operate(rollout_id, ctl.rollback)

    def _operate(
        self, rollout_id: str, op: Callable[[Rollout, float], tuple[builtins.list[Send], builtins.list[ctl.Event]]]
    ) -> Rollout:
        with self._lock:
            r = self._rollouts.get(rollout_id) or self.store.get(rollout_id)
            self._rollouts[rollout_id] = r
            try:
                sends, events = op(r, self.clock())
            except RolloutError as exc:
                raise ConflictError(str(exc)) from exc
            self._commit(r, sends, events)
            return Rollout.from_dict(r.to_dict())

    # -- worker ----------------------------------------------------------------------------

    def _select(self, profile: str | None, tags: dict[str, str]) -> builtins.list[Any]:
        out, offset = [], 0
        while True:
            page, total = self.devices.list(DeviceFilter(profile=profile, tags=tags), 500, offset)
            out += page
            offset += len(page)
            if not page or offset >= total:
                return out

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("rollouts: MQTT connect refused reason=%s", reason_code)
            return
        client.subscribe([(topics.all_devices(topics.OTA_STATUS), 1), (topics.all_devices(topics.STATUS), 1)])

    def _run(self) -> None:
        # paced on the monotonic clock: a wall clock stepped back an hour would stop the ticks for that hour
        next_tick = self._monotonic()
        # Messages whose handling met the database away (PostgreSQL restarting): kept in order and handled again
        # once it answers, not dropped (a dropped OTA status left its wave waiting until its timeout: halted).
        held: collections.deque[Any] = collections.deque()
        while not self._stop.is_set():
            if held:
                while True:  # newer messages queue behind the held ones
                    try:
                        held.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                item = held.popleft()
            else:
                try:
                    item = self._inbox.get(timeout=max(0.0, next_tick - self._monotonic()))
                except queue.Empty:
                    item = ()
            if item is None:
                return
            try:
                if item:
                    self._handle(*item)
                if self._monotonic() >= next_tick:
                    self._tick()
                    next_tick = self._monotonic() + self.config.tick_s
            except DatabaseUnavailableError as exc:
                if item:
                    held.appendleft(item)
                _failures.failed("rollouts worker error", exc)
                self._stop.wait(HELD_RETRY_S)
            except Exception as exc:  # one bad message must not stop rollouts
                _failures.failed("rollouts worker error", exc)

    def _handle(self, topic: str, payload: bytes) -> None:
        try:
            parsed = topics.parse_topic(topic)
        except topics.TopicError:
            return
        if parsed.kind == topics.OTA_STATUS:
            try:
                status = decode_status(payload, parsed.device_id)
            except OtaMessageError as exc:
                log.warning("rollouts: bad OTA status device=%s error=%s", parsed.device_id, exc)
                return
            if not self.store.first_seen(status.device_id, status.seq):
                return
            with self._lock:
                r = self._rollouts.get(status.rollout_id)
                if r is None:
                    return
                sends, events = ctl.on_status(
                    r, status.device_id, status.step, status.result, status.reason, status.health, self.clock()
                )
                self._commit(r, sends, events)
            if status.active_version is not None:
                try:
                    self.devices.heartbeat(
                        status.device_id, model_name=status.model, model_version=status.active_version
                    )
                except NotFoundError:
                    pass
        elif parsed.kind == topics.STATUS and parsed.device_id is not None:
            try:
                device_status = decode_device_status(payload)
            except Exception:
                return
            if device_status.get("state") != STATUS_ONLINE:
                self._boots.pop(parsed.device_id, None)
                return
            boot = device_status.get("boot")
            if boot is not None and self._boots.get(parsed.device_id) == boot:
                return  # the same agent process republished its status (e.g. after a switch): nothing was lost
            if boot is not None:
                self._boots[parsed.device_id] = boot
            self.catch_up(parsed.device_id)

    def catch_up(self, device_id: str) -> int:
        """Repeat unanswered commands to a device that came back; returns how many were sent."""
        n = 0
        with self._lock:
            for r in self._rollouts.values():
                sends = ctl.catch_up_device(r, device_id)
                for s in sends:
                    self._send(r, s)
                n += len(sends)
        return n

    def _clock_step(self) -> float:
        """How far the wall clock was stepped since the last call (0.0 within CLOCK_STEP_TOLERANCE_S):
        the wall clock's advance less the monotonic clock's."""
        wall, mono = self.clock(), self._monotonic()
        last, self._last_clocks = self._last_clocks, (wall, mono)
        if last is None:
            return 0.0
        step = (wall - last[0]) - (mono - last[1])
        return step if abs(step) > CLOCK_STEP_TOLERANCE_S else 0.0

    def _tick(self) -> None:
        step = self._clock_step()
        if step:
            log.warning("rollouts: the hub's wall clock stepped %+.0fs; waves keep their elapsed time", step)
        with self._lock:
            for r in list(self._rollouts.values()):
                if step and r.status in ctl.ACTIVE_STATUSES:
                    ctl.clock_stepped(r, step)
                    self._commit(
                        r, [], [ctl.Event("clock_stepped", {"reason": f"hub wall clock stepped {step:+.0f}s"})]
                    )
                if r.status != "running":
                    continue
                drift = self.drift_alerts(r.model, r.version) if self.drift_alerts else 0
                sends, events = ctl.tick(r, self.clock(), drift, self._figures(r))
                if r.status != "running":
                    self._quality.pop(r.rollout_id, None)
                if sends or events:
                    self._commit(r, sends, events)

    def _figures(self, r: Rollout) -> quality.Comparison | None:
        """The wave-vs-control figures from stored telemetry, re-read at most every quality_interval_s."""
        q = ctl.quality_query(r)
        if q is None or self.device_windows is None:
            return None
        now, at = self.clock(), self._monotonic()  # the cache's age on the monotonic clock, like the ticks
        cached = self._quality.get(r.rollout_id)
        if cached is not None and cached[0] == q and at - cached[1] < self.config.quality_interval_s:
            return cached[2]
        figures = quality.compare_sums(
            q,
            self.device_windows(list(q.wave_devices), q.since),
            self.device_windows(list(q.control_devices), q.since),
            now,
        )
        self._quality[r.rollout_id] = (q, at, figures)
        return figures

    def _commit(self, r: Rollout, sends: builtins.list[Send], events: builtins.list[ctl.Event]) -> None:
        self.store.save(r, events, self.clock())
        for s in sends:
            self._send(r, s)

    def _digest(self, model: str, version: str) -> str:
        key = (model, version)
        if key not in self._digests:
            self._digests[key] = hashlib.sha256(canonical_bytes(self.registry.manifest(model, version))).hexdigest()
        return self._digests[key]

    def _send(self, r: Rollout, s: Send) -> None:
        base = self.config.public_url.rstrip("/")
        now = self.clock()
        cmd = OtaCommand(
            rollout_id=r.rollout_id,
            action=s.action,
            model=r.model,
            version=r.version,
            manifest_url=f"{base}/v1/models/{r.model}/versions/{r.version}/manifest",
            manifest_sha256=self._digest(r.model, r.version),
            artifact_base_url=f"{base}/v1/artifacts",
            issued_at=now,
            deadline=now + self.config.command_ttl_s,
            watch_s=self.config.watch_s,
        )
        self._client.publish(
            topics.ota_cmd_topic(s.device_id),
            encode_command(cmd, self.key.private_key),
            qos=1,
            properties=publish_properties(topics.OTA_CMD),
        )
        self.sent += 1


def rollout_summary(r: Rollout) -> dict[str, Any]:
    """What lists show: no per-device rows."""
    return {
        "rollout_id": r.rollout_id,
        "model": r.model,
        "version": r.version,
        "status": r.status,
        "wave": r.wave + 1,
        "waves": r.waves,
        "reason": r.reason,
        "devices": len(r.devices),
        "counts": r.counts(),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def rollout_detail(r: Rollout) -> dict[str, Any]:
    data = rollout_summary(r)
    data["gates"] = r.gates.__dict__.copy()
    data["control"] = list(r.control)
    data["quality"] = r.quality
    data["device_states"] = [
        {
            "device_id": d.device_id,
            "wave": d.wave + 1,
            "state": d.state,
            "step": d.step,
            "reason": d.reason,
            "updated_at": d.updated_at,
        }
        for d in r.devices.values()
    ]
    return data
