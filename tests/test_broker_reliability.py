"""The hub's generated Mosquitto keeps the hub's session through a restart, queues past the
old 1,000-message default, and refuses a port a leftover broker holds (real mosquitto)."""

from __future__ import annotations

import shutil
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tandem.cloud_hub.broker import MAX_QUEUED_MESSAGES, MosquittoBroker
from tandem.cloud_hub.errors import BrokerError
from waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed")
BURST = 1500  # over Mosquitto's default max_queued_messages (1,000), which dropped the rest silently


def _session(port: int, got: list[bytes], subscribe: bool) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hub-session-test", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: got.append(m.payload)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=props)
    client.loop_start()
    if subscribe:
        client.subscribe("fleet/+/telemetry", qos=1)
        assert subscribed.wait(5)
    return client


def _publish(port: int, n: int) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device-test", protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish("fleet/d1/telemetry", str(i).encode(), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()


def test_restart_keeps_the_hub_session_and_queues_a_burst_past_the_old_default(tmp_path):
    workdir = tmp_path / "mosquitto"
    broker = MosquittoBroker.start(workdir)
    port = broker.port
    conf = (workdir / "mosquitto.conf").read_text()
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}" in conf and "\nuser " in conf
    got: list[bytes] = []
    try:
        hub = _session(port, got, subscribe=True)
        hub.disconnect()
        hub.loop_stop()
        broker.stop()  # SIGTERM: writes its persistence
        broker = MosquittoBroker.start(workdir, port=port)  # same port, same data
        _publish(port, BURST)  # the hub is away: the broker must queue for it
        hub = _session(port, got, subscribe=False)  # no resubscribe: the session came back from disk
        assert wait_for(lambda: len(got) >= BURST, 30), f"{len(got)} of {BURST} delivered"
        hub.disconnect()
        hub.loop_stop()
        assert sorted(int(x) for x in got) == list(range(BURST))
        assert "Permission denied" not in (workdir / "mosquitto.log").read_text(errors="replace")
    finally:
        broker.stop()


def test_a_port_held_by_a_leftover_broker_is_a_loud_error_not_a_borrowed_broker(tmp_path):
    leftover = MosquittoBroker.start(tmp_path / "killed-hub")
    try:
        started = time.monotonic()
        with pytest.raises(BrokerError, match=rf"127.0.0.1:{leftover.port}: .*another broker"):
            MosquittoBroker.start(tmp_path / "new-hub", port=leftover.port)
        assert time.monotonic() - started < 5
    finally:
        leftover.stop()
