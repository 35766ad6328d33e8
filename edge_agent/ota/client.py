"""The device's OTA shell: MQTT in (signed commands on /ota/cmd), MQTT out (status on /ota/status).

paho's network thread only decodes and enqueues; one worker thread runs the commands
in order through an `Updater`. The MQTT session is persistent (clean_start=False with
an expiry), so commands the hub sent while the device was away arrive when it returns.
Status sequence numbers are max(last + 1, wall-clock ms), so they keep growing across
restarts without a write per status. With a `status_sink` (the agent's telemetry outbox,
class 0) statuses are stored on disk and sent ahead of routine telemetry instead of being
published here, so they survive a restart while the broker is away.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tandem.edge_agent.ota.download import DownloadConfig
from tandem.edge_agent.ota.machine import HealthFigures, WatchPolicy
from tandem.edge_agent.ota.store import ModelStore, Recovery
from tandem.edge_agent.ota.hubclock import CLOCK_TOLERANCE_S, HubClock
from tandem.edge_agent.ota.updater import HealthProbe, SwitchHook, Updater, UpdaterConfig
from tandem.protocols import limits
from tandem.protocols.mqtt_client import set_reconnect_delay, stop_loop
from tandem.protocols.mqtt_props import publish_properties
from tandem.protocols.ota import OtaCommand, OtaMessageError, OtaStatus, decode_command, encode_status
from tandem.protocols.signing import load_public_key
from tandem.protocols.tls import TlsFiles, configure_mqtt_client
from tandem.protocols.topics import OTA_STATUS, ota_cmd_topic, ota_status_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OtaClientConfig:
    device_id: str
    profile: str
    mqtt_url: str
    store_dir: Path
    trusted_key_pem: bytes | str | Path  # the hub's release key (GET /v1/keys/release)
    hub_token: str | None = None  # bearer token (read scope) for manifests and artifacts
    watch: WatchPolicy = field(default_factory=WatchPolicy)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    keepalive_s: int = 10
    session_expiry_s: int = 7 * 24 * 3600
    poll_s: float = 0.25
    tls: TlsFiles | None = None  # mutual TLS (mqtts://); None: plain text, development only


StatusSink = Callable[[bytes], None]  # takes an encoded OtaStatus for /ota/status and must store it durably


class OtaClient:
    """Start after the agent can serve; `on_switch(model_dir)` must hot-swap without dropping requests.

    `status_sink`, when given, receives every encoded status instead of this client's own MQTT
    publish (the agent passes its telemetry outbox's `enqueue` for topics.OTA_STATUS).
    """

    def __init__(
        self,
        config: OtaClientConfig,
        on_switch: SwitchHook,
        health: HealthProbe | None = None,
        clock: Callable[[], float] = time.time,
        status_sink: StatusSink | None = None,
    ) -> None:
        self.config = config
        self.status_sink = status_sink
        self.store = ModelStore(config.store_dir)
        self.clock = clock
        self.hub_clock = HubClock()  # OTA deadlines are checked on the hub's time
        self._cancel = threading.Event()
        self._queue: queue.Queue[OtaCommand | None] = queue.Queue()
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._current: OtaCommand | None = None
        self._done: dict[tuple[str, str, str], tuple[str, str, str]] = {}  # (rollout, action, version) -> last status
        self._subscribed = threading.Event()
        self._pending: list[OtaStatus] = []  # said once connected (paho drops publishes before the first connect)
        self.recovery: Recovery | None = None
        key = load_public_key(config.trusted_key_pem)
        download = (
            config.download
            if config.download.token or not config.hub_token
            else DownloadConfig(**{**config.download.__dict__, "token": config.hub_token})
        )
        self.updater = Updater(
            self.store,
            key,
            UpdaterConfig(config.profile, download, config.watch, config.poll_s),
            on_switch,
            self._publish_step,
            health or HealthFigures,
            clock,
            self._cancel,
            self.hub_clock,
        )
        self._cmd_topic = ota_cmd_topic(config.device_id)
        self._status_topic = ota_status_topic(config.device_id)
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tandem-ota-{config.device_id}", protocol=mqtt.MQTTv5
        )
        self._host, self._port = configure_mqtt_client(
            self._client, config.mqtt_url, config.tls, f"OTA client (device {config.device_id})"
        )
        set_reconnect_delay(self._client, 0.2, 2.0)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._worker: threading.Thread | None = None

    def open_store(self) -> Recovery:
        """Repair the store after a crash (rolls back an unfinished trial); called by `start`."""
        if self.recovery is None:
            self.recovery = self.store.open()
        return self.recovery

    @property
    def active_dir(self) -> Path | None:
        return self.store.active_dir

    def start(self) -> "OtaClient":
        recovery = self.open_store()
        if recovery.rolled_back_trial is not None:
            trial = recovery.rolled_back_trial
            self._pending.append(
                OtaStatus(
                    self.config.device_id,
                    self._next_seq(),
                    trial.get("rollout_id", "unknown"),
                    "rolled_back",
                    "ok",
                    self.store.state.active.model if self.store.state.active else "unknown",
                    trial["version"],
                    self.store.active_version,
                    self.store.previous_version,
                    "the agent restarted while this version was on trial",
                )
            )
        if self.status_sink is not None:  # durable now; no need to wait for our own connection
            while self._pending:
                self._send(self._pending.pop(0))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.MaximumPacketSize = (
            limits.MAX_MQTT_PAYLOAD_BYTES + limits.MQTT_PACKET_OVERHEAD_BYTES
        )  # broker drops bigger
        self._client.connect_async(
            self._host, self._port, keepalive=self.config.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._worker = threading.Thread(target=self._run, name=f"ota-{self.config.device_id}", daemon=True)
        self._worker.start()
        return self

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the current step; an update on trial stays uncommitted (rolled back on next start)."""
        self._cancel.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout_s)
        self._client.disconnect()
        if not stop_loop(self._client, 2.0):  # paho's own loop_stop() may wait on a hung connect
            log.warning("ota: MQTT network thread still busy after 2 s; left to exit with the process")

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("ota connect refused device=%s reason=%s", self.config.device_id, reason_code)
            return
        client.subscribe(self._cmd_topic, qos=1)
        while self._pending:
            self._send(self._pending.pop(0))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            # Deadline checked by the worker, so an expired command still gets a 'rejected' answer.
            cmd = decode_command(msg.payload, self.updater.trusted_key, now=float("-inf"))
        except OtaMessageError as exc:
            log.warning("ota command dropped device=%s error=%s", self.config.device_id, exc)
            return
        self.hub_clock.observe(cmd.issued_at, self.clock())
        self._queue.put(cmd)

    # -- worker --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._cancel.is_set():
            cmd = self._queue.get()
            if cmd is None:
                return
            self._current = cmd
            try:
                self._handle(cmd)
            except Exception as exc:  # a bug must not kill the worker; the hub sees 'failed'
                log.exception("ota worker error device=%s", self.config.device_id)
                self._publish_step("failed", "error", f"internal error: {exc!r}", {})
            finally:
                self._current = None

    def _handle(self, cmd: OtaCommand) -> None:
        key = (cmd.rollout_id, cmd.action, cmd.version)
        if key in self._done:
            step, result, reason = self._done[key]
            # a committed repeat carries the figures it was committed on: a restarted hub's gate needs them
            health = dict(self.store.state.health or {}) if step == "committed" else {}
            self._publish_step(step, result, f"(repeat) {reason}", health)
            return
        late = self.hub_clock.expired(cmd.deadline, self.clock())
        if late is not None:  # on the hub's clock (estimated from its commands), with a stated tolerance
            self._publish_step(
                "rejected",
                "error",
                f"command deadline passed {late:.0f}s ago on the hub's clock "
                f"(offset {self.hub_clock.offset_s or 0.0:+.0f}s, tolerance {CLOCK_TOLERANCE_S:g}s)",
                {},
            )
            return
        self.updater.run(cmd)

    def _publish_step(self, step: str, result: str, reason: str, health: dict) -> None:
        cmd = self._current
        if cmd is None:
            return
        if step in ("committed", "rolled_back", "failed", "rejected"):
            self._done[(cmd.rollout_id, cmd.action, cmd.version)] = (step, result, reason)
        log.info(
            "ota step device=%s rollout=%s version=%s step=%s reason=%s",
            self.config.device_id,
            cmd.rollout_id,
            cmd.version,
            step,
            reason,
        )
        self._send(
            OtaStatus(
                self.config.device_id,
                self._next_seq(),
                cmd.rollout_id,
                step,
                result,
                cmd.model,
                cmd.version,
                self.store.active_version,
                self.store.previous_version,
                reason[:2000],
                health,
                at=self.clock(),
            )
        )

    def _send(self, status: OtaStatus) -> None:
        payload = encode_status(status)
        if self.status_sink is not None:
            try:
                self.status_sink(payload)
                return
            except Exception:  # e.g. the outbox's disk failed: say it over our own session rather than not at all
                log.exception(
                    "ota status sink failed device=%s step=%s; publishing directly", self.config.device_id, status.step
                )
        # QoS 1: paho keeps it while disconnected and sends it after the reconnect.
        self._client.publish(self._status_topic, payload, qos=1, properties=publish_properties(OTA_STATUS))

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq = max(self._seq + 1, int(time.time() * 1000))
            return self._seq
