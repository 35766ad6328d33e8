"""The fleet's MQTT broker the hub starts when none is configured: a real publish/subscribe round trip."""

from __future__ import annotations

import shutil
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest

from tandem.cloud_hub.broker import EmbeddedBroker, MosquittoBroker, start_broker
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub


def round_trip(url: str, timeout: float = 5.0) -> bytes:
    """Subscribe, publish at QoS 1, return what came back (bounded in time)."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    topic = f"test/{uuid.uuid4().hex}"
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: (got.append(m.payload), received.set())
    client.connect(host, int(port), keepalive=10)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        assert subscribed.wait(timeout), "no SUBACK"
        client.publish(topic, b"hello fleet", qos=1).wait_for_publish(timeout)
        assert received.wait(timeout), "message did not come back"
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


def test_embedded_broker_round_trip_and_stop():
    broker = EmbeddedBroker.start()
    try:
        assert round_trip(broker.url) == b"hello fleet"
    finally:
        broker.stop()
    host, port = broker.url.removeprefix("mqtt://").rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    with pytest.raises(OSError):
        client.connect(host, int(port))


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed (apt-get install mosquitto)")
def test_mosquitto_broker_round_trip_with_generated_config(tmp_path):
    broker = MosquittoBroker.start(tmp_path / "mosquitto")
    try:
        assert round_trip(broker.url) == b"hello fleet"
        conf = (tmp_path / "mosquitto" / "mosquitto.conf").read_text()
        assert f"listener {broker.port} 127.0.0.1" in conf
    finally:
        broker.stop()
    assert broker.process.poll() is not None


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed (apt-get install mosquitto)")
def test_a_picked_port_taken_before_mosquitto_binds_it_is_picked_again(tmp_path, monkeypatch):
    import socket

    from tandem.cloud_hub import broker as broker_module

    with socket.socket() as squatter:  # takes the first port the hub picks, between the pick and the bind
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(4)
        taken = squatter.getsockname()[1]
        picks = [taken]
        real_free_port = broker_module.free_port
        monkeypatch.setattr(
            broker_module, "free_port", lambda host="127.0.0.1": picks.pop(0) if picks else real_free_port(host)
        )
        broker = MosquittoBroker.start(tmp_path / "mosquitto")
        try:
            assert broker.port != taken and broker.process.poll() is None
            assert round_trip(broker.url) == b"hello fleet"
        finally:
            broker.stop()
        # a port the operator chose is never swapped for another: the error names it
        with pytest.raises(broker_module.BrokerError, match=f"127.0.0.1:{taken}"):
            MosquittoBroker.start(tmp_path / "mosquitto2", port=taken)


def test_auto_picks_mosquitto_when_installed(tmp_path):
    broker = start_broker("auto", tmp_path / "m")
    try:
        assert broker.kind == ("mosquitto" if shutil.which("mosquitto") else "embedded")
    finally:
        broker.stop()


def test_hub_starts_a_broker_only_without_mqtt_url(tmp_path):
    with Hub(
        HubConfig.from_keys({"data_dir": tmp_path / "a", "http.port": 0, "mqtt.broker": "embedded"})
    ).start() as hub:
        assert hub.broker_kind == "embedded"
        assert round_trip(hub.urls()["mqtt"]) == b"hello fleet"
    with Hub(
        HubConfig.from_keys({"data_dir": tmp_path / "b", "http.port": 0, "mqtt.url": "mqtt://broker.example:1883"})
    ).start() as hub:
        assert hub.broker_kind == "external" and hub.urls()["mqtt"] == "mqtt://broker.example:1883"
