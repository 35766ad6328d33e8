"""Revoking a device's certificate cuts its open MQTT session within seconds and ends its device
token, without restarting the hub: a real hub on mutual TLS with its own Mosquitto, two devices
connected with paho."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import AuthError
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.pki import Pki
from tandem.protocols.tls import configure_mqtt_client
from telemetry_fixtures import MOSQUITTO

pytestmark = pytest.mark.slow


class Device:
    """A paho client with its certificate that records connects and disconnects (it reconnects by itself)."""

    def __init__(self, url: str, pki: Pki, device_id: str) -> None:
        self.events: queue.Queue[str] = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tandem-agent-{device_id}", protocol=mqtt.MQTTv5
        )
        host, port = configure_mqtt_client(self.client, url, pki.device_files(device_id), f"tandem-agent-{device_id}")
        self.client.on_connect = lambda c, u, f, rc, p: self.events.put("refused" if rc.is_failure else "connected")
        self.client.on_disconnect = lambda c, u, f, rc, p: self.events.put("disconnected")
        self.client.reconnect_delay_set(0.2, 0.5)
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def next_event(self, timeout: float) -> str:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return "nothing"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_revoked_certificate_loses_its_open_session_within_seconds(tmp_path: Path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    pki = Pki.init(tmp_path / "pki")
    for device in ("dev-a", "dev-b"):
        pki.issue_device(device)
    hub = Hub(
        HubConfig.from_keys(
            {
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.broker": "mosquitto",
                "tls_dir": tmp_path / "pki",
                "telemetry.enabled": False,
                "rollouts.enabled": False,
            }
        )
    ).start(http=False)
    a = b = None
    try:
        a, b = Device(hub.mqtt_url, pki, "dev-a"), Device(hub.mqtt_url, pki, "dev-b")
        assert a.next_event(10) == "connected" and b.next_event(10) == "connected"
        token_a, token_b = (hub.tokens.create(d, "device", d).token for d in ("dev-a", "dev-b"))
        assert hub.tokens.authenticate(token_a).device_id == "dev-a"
        url_before = hub.mqtt_url
        t0 = time.monotonic()
        pki.revoke("dev-a")  # what `tandem-hub pki revoke dev-a` does on the hub host
        assert a.next_event(10) == "disconnected"
        cut_after = time.monotonic() - t0
        assert cut_after < 5, cut_after
        # dev-a keeps trying and never gets back in; dev-b is back on the same URL
        assert b.next_event(10) == "disconnected" and b.next_event(10) == "connected"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert a.next_event(0.5) in ("nothing", "disconnected", "refused")
        assert hub.mqtt_url == url_before
        with pytest.raises(AuthError, match="revoked"):  # the watch revoked it with the certificate
            hub.tokens.authenticate(token_a)
        assert hub.tokens.authenticate(token_b).device_id == "dev-b"
    finally:
        for d in (a, b):
            if d is not None:
                d.close()
        hub.stop()
