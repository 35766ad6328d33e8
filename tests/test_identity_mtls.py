"""Identity bound to the certificate, on a real hub with mutual TLS (its own Mosquitto, HTTPS REST):
dev-a's valid certificate cannot take dev-b's MQTT client id (refused, dev-b stays connected, the
hub counts it), and dev-a's device token reads nothing of dev-b's or of the fleet. That revoking
dev-a's certificate cuts its open session and ends its token is tests/test_revocation_mtls.py."""

from __future__ import annotations

import queue
import ssl
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.pki import Pki
from tandem.protocols import topics
from tandem.protocols.tls import TlsFiles, configure_mqtt_client
from telemetry_fixtures import MOSQUITTO
from waiting import wait_for

pytestmark = pytest.mark.slow

TIMEOUT_S = 10.0


def tls_hub_config(data_dir: Path, tls_dir: Path) -> HubConfig:
    return HubConfig.from_keys(
        {
            "data_dir": data_dir,
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.broker": "mosquitto",
            "tls_dir": tls_dir,
            "telemetry.enabled": False,
            "rollouts.enabled": False,
        }
    )


def _trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_cert_path))


class Session:
    """A paho MQTT 5 client on a certificate; records connects, refusals, disconnects and messages."""

    def __init__(self, url: str, files: TlsFiles, client_id: str) -> None:
        self.events: queue.Queue[str] = queue.Queue()
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.host, self.port = configure_mqtt_client(self.client, url, files, client_id)
        self.client.on_connect = lambda c, u, f, rc, p: self.events.put("refused" if rc.is_failure else "connected")
        self.client.on_disconnect = lambda c, u, f, rc, p: self.events.put("disconnected")
        self.client.on_message = lambda c, u, m: self.messages.put(m.payload)

    def connect(self) -> str:
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        try:
            return self.events.get(timeout=TIMEOUT_S)
        except queue.Empty:
            return "no answer"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    root = tmp_path_factory.mktemp("identity")
    pki = Pki.init(root / "pki")
    for device in ("dev-a", "dev-b"):
        pki.issue_device(device)
    hub = Hub(tls_hub_config(root / "hub", root / "pki")).start()
    try:
        yield hub, pki
    finally:
        hub.stop()


def test_a_certificate_cannot_take_another_devices_client_id_and_the_hub_counts_it(fleet):
    hub, pki = fleet
    sessions: list[Session] = []

    def session(device: str, client_id: str) -> Session:
        s = Session(hub.mqtt_url, pki.device_files(device), client_id)
        sessions.append(s)
        return s

    try:
        b = session("dev-b", "tandem-ota-dev-b")
        assert b.connect() == "connected"
        b.client.subscribe(topics.ota_cmd_topic("dev-b"), qos=1)
        for stolen in ("tandem-ota-dev-b", "tandem-agent-dev-b", "tandem-ota-dev-b"):
            assert session("dev-a", stolen).connect() == "refused", stolen
        assert session("dev-a", "tandem-agent-dev-a").connect() == "connected"  # its own ids still work

        # dev-b never lost its session: a command sent after the attempts reaches it, with no disconnect between
        commander = Session(hub.mqtt_url, pki.hub_client_files(), "test-commander")
        sessions.append(commander)
        assert commander.connect() == "connected"
        commander.client.publish(topics.ota_cmd_topic("dev-b"), b"after", qos=1).wait_for_publish(TIMEOUT_S)
        assert b.messages.get(timeout=TIMEOUT_S) == b"after"
        assert b.events.empty(), "dev-b was knocked off the broker"

        reader = hub.tokens.create("ops", "read").token
        with httpx.Client(base_url=hub.http_url, verify=_trusting(pki)) as rest:

            def refusals() -> str:
                body = rest.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).text
                return next((ln for ln in body.splitlines() if ln.startswith("tandem_hub_mqtt_identity_refusals")), "")

            assert wait_for(lambda: refusals().endswith(" 3.0") or refusals().endswith(" 3"), TIMEOUT_S), refusals()
            assert 'certificate="dev-a"' in refusals()
    finally:
        for s in sessions:
            s.close()


def test_a_device_token_reads_nothing_of_other_devices_or_the_fleet(fleet):
    hub, pki = fleet
    token_a = hub.tokens.create("dev-a", "device", "dev-a").token
    auth = {"Authorization": f"Bearer {token_a}"}
    with httpx.Client(base_url=hub.http_url, verify=_trusting(pki), headers=auth) as rest:
        # what an agent needs: the release key it verifies manifests with (files: tests/test_device_token_scope.py)
        assert rest.get("/v1/keys/release").status_code == 200
        assert rest.get("/v1/auth/whoami").json()["scope"] == "device"
        assert rest.get("/v1/artifacts/" + "0" * 64).status_code == 403  # no version rolled out to dev-a holds it
        fleet_data = [
            "/v1/devices",
            "/v1/devices/dev-b",
            "/v1/devices/dev-a",
            "/v1/telemetry/windows?device_id=dev-b",
            "/v1/telemetry/devices/dev-b",
            "/v1/hard-examples",
            "/v1/hard-examples/dev-b/1",
            "/v1/rollouts",
            "/v1/models",
            "/v1/tokens",
            "/metrics",
        ]
        for path in fleet_data:
            r = rest.get(path)
            assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert rest.post("/v1/tokens", json={"name": "x", "scope": "admin"}).status_code == 403
