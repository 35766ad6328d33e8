"""Mutual TLS with per-device identity, on a real Mosquitto (generated config) and a real gRPC hub.

One PKI for the module: devices dev-a and dev-b, dev-gone (revoked). The broker runs
the config `tandem-hub pki mosquitto-conf` writes; the hub's inference server runs
with TLS. Every "nothing arrived" check is closed by a sentinel message that the
same connection sends afterwards, so no test waits on a timer to prove an absence.
"""

from __future__ import annotations

import queue
import ssl
import subprocess
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent_fixtures import make_linear_softmax, make_model_dir
from tandem.cloud_hub.broker import free_port, wait_for_port
from tandem.cloud_hub.inference import InferenceServer
from tandem.cloud_hub.mqtt_security import MosquittoTlsConfig, write_mosquitto_config
from tandem.cloud_hub.pki import HUB_IDENTITY, Pki, RevocationList, common_name
from tandem.cloud_hub.errors import ConflictError, InvalidInputError
from tandem.edge_agent.errors import FallbackUnavailable
from tandem.edge_agent.fallback import FallbackClient
from tandem.protocols import topics
from tandem.protocols.tls import TlsConfigError, TlsFiles, configure_mqtt_client
from telemetry_fixtures import MOSQUITTO
from waiting import wait_for

pytestmark = pytest.mark.slow

CONNECT_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    pki = Pki.init(tmp_path_factory.mktemp("pki") / "pki", ["hub.test"])
    for device in ("dev-a", "dev-b", "dev-gone"):
        pki.issue_device(device)
    pki.revoke("dev-gone")
    return pki


@pytest.fixture(scope="module")
def broker_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mosquitto-tls")


@pytest.fixture(scope="module")
def broker(pki, broker_dir):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    workdir = broker_dir
    port = free_port()
    conf = write_mosquitto_config(pki, MosquittoTlsConfig(workdir, port=port, persistence=False))
    log = open(workdir / "mosquitto.log", "ab")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        if not wait_for_port("127.0.0.1", port, 10, alive=lambda: proc.poll() is None):
            pytest.fail(f"mosquitto did not start: {(workdir / 'mosquitto.log').read_text()[-600:]}")
        yield f"mqtts://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class Conn:
    """A paho client that records its connect outcome and its messages."""

    def __init__(self, url: str, tls: TlsFiles | None, client_id: str, ca: Path) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls is not None:
            self.host, self.port = configure_mqtt_client(self.client, url, tls, client_id)
        else:  # no certificate at all, but still TLS (it trusts the CA)
            self.host, self.port = topics.parse_mqtt_url(url)
            self.client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.outcome: queue.Queue[str] = queue.Queue()
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.outcome.put("refused" if rc.is_failure else "connected")
        self.client.on_disconnect = lambda c, u, f, rc, p: self.outcome.put(f"disconnected {rc}")
        self.client.on_connect_fail = lambda c, u: self.outcome.put("connect failed")
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def connect(self) -> str:
        """'connected', or why not (TLS refusal, refused CONNACK, disconnect)."""
        try:
            self.client.connect(self.host, self.port, keepalive=10)
        except (ssl.SSLError, OSError) as exc:
            return f"tls error {exc}"
        self.client.loop_start()
        try:
            return self.outcome.get(timeout=CONNECT_TIMEOUT_S)
        except queue.Empty:
            return "no answer"

    def subscribe(self, *filters: str) -> None:
        self.subscribed.clear()
        self.client.subscribe([(f, 1) for f in filters])
        assert self.subscribed.wait(CONNECT_TIMEOUT_S)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(CONNECT_TIMEOUT_S)

    def take_until(self, sentinel_topic: str) -> list[tuple[str, bytes]]:
        """Messages received up to and including the first one on `sentinel_topic`."""
        got = []
        while True:
            topic, payload = self.messages.get(timeout=CONNECT_TIMEOUT_S)
            got.append((topic, payload))
            if topic == sentinel_topic:
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def conns(pki, broker):
    made: list[Conn] = []

    def make(tls: TlsFiles | None, client_id: str) -> Conn:
        conn = Conn(broker, tls, client_id, pki.ca_cert_path)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def test_pki_rejects_ids_that_would_escape_a_topic_level(pki):
    for bad in ("a+b", "a#", "a/b", "", "x" * (topics.MAX_DEVICE_ID_CHARS + 1), HUB_IDENTITY, "$SYS"):
        with pytest.raises(InvalidInputError):
            pki.issue_device(bad)
    with pytest.raises(ConflictError):
        pki.issue_device("dev-a")  # already holds a live certificate
    assert common_name(pki.device_files("dev-a").cert.read_bytes()) == "dev-a"
    assert pki.device_files("dev-a").key.stat().st_mode & 0o077 == 0
    assert pki.ca_key_path.stat().st_mode & 0o077 == 0
    crl = RevocationList(pki.crl_path, pki.ca_cert_path)
    assert crl.is_revoked(pki.device_files("dev-gone").cert.read_bytes())
    assert not crl.is_revoked(pki.device_files("dev-a").cert.read_bytes())


def test_tls_settings_must_match_the_url_scheme(pki):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    with pytest.raises(TlsConfigError, match="mqtts"):
        configure_mqtt_client(client, "mqtt://127.0.0.1:1883", pki.device_files("dev-a"), "test")
    with pytest.raises(TlsConfigError, match="no tls files"):
        configure_mqtt_client(client, "mqtts://127.0.0.1:8883", None, "test")


def test_device_cannot_publish_as_another_device(pki, conns):
    hub = conns(pki.hub_client_files(), "hub-observer")
    a = conns(pki.device_files("dev-a"), "tandem-agent-dev-a")
    assert hub.connect() == "connected" and a.connect() == "connected"
    hub.subscribe(topics.all_devices(topics.TELEMETRY), topics.all_devices(topics.STATUS))
    forged = [topics.telemetry_topic("dev-b"), topics.status_topic("dev-b"), topics.events_topic(None)]
    for topic in forged:
        a.publish(topic, b"forged")
    a.publish(topics.telemetry_topic("dev-a"), b"genuine")  # the sentinel: same connection, sent after
    got = hub.take_until(topics.telemetry_topic("dev-a"))
    assert got == [(topics.telemetry_topic("dev-a"), b"genuine")], f"forged messages reached the hub: {got}"


def test_device_cannot_read_another_devices_commands(pki, conns):
    hub = conns(pki.hub_client_files(), "hub-commander")
    a = conns(pki.device_files("dev-a"), "tandem-ota-dev-a")
    b = conns(pki.device_files("dev-b"), "tandem-ota-dev-b")
    assert hub.connect() == "connected" and a.connect() == "connected" and b.connect() == "connected"
    a.subscribe(topics.ota_cmd_topic("dev-b"), topics.all_devices(topics.OTA_CMD), "#", topics.ota_cmd_topic("dev-a"))
    b.subscribe(topics.ota_cmd_topic("dev-b"))
    hub.publish(topics.ota_cmd_topic("dev-b"), b"for b only")
    hub.publish(topics.ota_cmd_topic("dev-a"), b"for a")  # a's sentinel
    hub.publish(topics.ota_cmd_topic("dev-b"), b"b sentinel")
    got_a = a.take_until(topics.ota_cmd_topic("dev-a"))
    assert got_a == [(topics.ota_cmd_topic("dev-a"), b"for a")], f"dev-a read another device's commands: {got_a}"
    assert b.take_until(topics.ota_cmd_topic("dev-b"))[0] == (topics.ota_cmd_topic("dev-b"), b"for b only")


def test_a_device_cannot_take_another_devices_client_id(pki, conns, broker_dir):
    """dev-a's valid certificate with dev-b's client id is refused before the broker looks up
    dev-b's session, so dev-b stays connected; the refusal is logged for the hub to count."""
    hub = conns(pki.hub_client_files(), "hub-commander-2")
    b = conns(pki.device_files("dev-b"), "tandem-ota-dev-b")
    assert hub.connect() == "connected" and b.connect() == "connected"
    b.subscribe(topics.ota_cmd_topic("dev-b"))
    for stolen in ("tandem-ota-dev-b", "tandem-agent-dev-b", "dev-b", "dev-a", "tandem-ota-dev-a-x", "hub-x"):
        assert conns(pki.device_files("dev-a"), stolen).connect() == "refused", stolen
    assert conns(pki.device_files("dev-a"), "tandem-ota-dev-a").connect() == "connected"
    hub.publish(topics.ota_cmd_topic("dev-b"), b"still here")
    assert b.take_until(topics.ota_cmd_topic("dev-b")) == [(topics.ota_cmd_topic("dev-b"), b"still here")]
    assert b.outcome.empty(), "dev-b was disconnected"
    log = (broker_dir / "mosquitto.log").read_text()
    assert 'refused certificate CN "dev-a" client id "tandem-ota-dev-b"' in log, log[-800:]


def test_revoked_and_missing_certificates_are_refused_on_mqtt(pki, conns):
    outcome = conns(pki.device_files("dev-gone"), "tandem-agent-dev-gone").connect()
    assert outcome != "connected", "a revoked certificate was accepted"
    outcome = conns(None, "tandem-agent-dev-a").connect()
    assert outcome != "connected", "a client without a certificate was accepted"
    stranger = Pki.init(pki.root.parent / "other-ca")  # a certificate from another CA
    stranger.issue_device("dev-a")
    files = stranger.device_files("dev-a")
    outcome = conns(TlsFiles(pki.ca_cert_path, files.cert, files.key), "tandem-agent-dev-a").connect()
    assert outcome != "connected", "a certificate signed by another CA was accepted"
    assert conns(pki.device_files("dev-b"), "tandem-agent-dev-b").connect() == "connected"


# -- gRPC -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_hub(pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls-hub")
    model_dir = make_model_dir(make_linear_softmax(tmp / "lin.onnx"), tmp / "lin", name="lin")
    server = InferenceServer([model_dir], port=0, tls=pki.hub_server_files(), device_rate_per_s=1.0, device_burst=3)
    server.start()
    yield server
    server.stop()


X = np.ones((1, 4), dtype=np.float32)


def infer(server: InferenceServer, tls: TlsFiles | None, device: str, url: str | None = None) -> object:
    with FallbackClient(url or f"grpcs://{server.address}", deadline_ms=3000, tls=tls) as client:
        return client.infer("lin", {"x": X}, device_id=device, model_version="1")


def test_grpc_mutual_tls_accepts_a_valid_device(pki, tls_hub):
    result = infer(tls_hub, pki.device_files("dev-a"), "dev-a")
    assert result.outputs["y"].shape == (1, 3)


def test_grpc_refuses_revoked_missing_and_impersonating_certificates(pki, tls_hub):
    with pytest.raises(FallbackUnavailable, match="UNAUTHENTICATED"):
        infer(tls_hub, pki.device_files("dev-gone"), "dev-gone")
    with pytest.raises(FallbackUnavailable):  # no client certificate: the handshake fails
        infer(tls_hub, TlsFiles(pki.ca_cert_path), "dev-a")
    with pytest.raises(FallbackUnavailable):  # plain text to a TLS port
        infer(tls_hub, None, "dev-a", url=f"grpc://{tls_hub.address}")
    with pytest.raises(FallbackUnavailable, match="PERMISSION_DENIED"):
        infer(tls_hub, pki.device_files("dev-a"), "dev-b")


def test_grpc_revocation_applies_without_a_restart(pki, tls_hub, tmp_path):
    pki.issue_device("dev-late")
    assert infer(tls_hub, pki.device_files("dev-late"), "dev-late").outputs["y"].shape == (1, 3)
    pki.revoke("dev-late")
    with pytest.raises(FallbackUnavailable, match="UNAUTHENTICATED"):
        infer(tls_hub, pki.device_files("dev-late"), "dev-late")


def test_grpc_rate_limits_each_device(pki, tls_hub):
    pki.issue_device("dev-busy")
    files = pki.device_files("dev-busy")
    codes = []
    with FallbackClient(f"grpcs://{tls_hub.address}", deadline_ms=3000, tls=files) as client:
        for _ in range(10):  # burst 3 at 1/s: most of 10 back-to-back calls are refused
            try:
                client.infer("lin", {"x": X}, device_id="dev-busy", model_version="1")
                codes.append("ok")
            except FallbackUnavailable as exc:
                codes.append("limited" if "RESOURCE_EXHAUSTED" in str(exc) else str(exc))
    assert codes[:3] == ["ok"] * 3 and codes.count("limited") >= 5, codes
    assert infer(tls_hub, pki.device_files("dev-b"), "dev-b").outputs["y"].shape == (1, 3)  # others unaffected


# -- the real shells over mutual TLS ----------------------------------------------------------------


def test_agent_publisher_and_hub_ingest_work_over_mutual_tls(pki, broker, tmp_path):
    from tandem.cloud_hub.telemetry.ingest import IngestConfig, TelemetryIngest
    from tandem.cloud_hub.telemetry.store import TelemetryStore
    from tandem.edge_agent.telemetry.outbox import Outbox
    from tandem.edge_agent.telemetry.publisher import PublisherConfig, TelemetryPublisher
    from tandem.protocols.telemetry_pb2 import TelemetryWindow

    store = TelemetryStore.open(tmp_path / "hub")
    ingest = TelemetryIngest(
        IngestConfig(broker, client_id="hub-ingest-tls", tls=pki.hub_client_files()), store
    ).start()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for _ in range(3):
        w = TelemetryWindow(
            schema_version=1, device_id="dev-a", model_name="m", model_version="1.0.0", start_unix=1.0, end_unix=2.0
        )
        outbox.append(w)
    publisher = TelemetryPublisher(PublisherConfig(broker, tls=pki.device_files("dev-a")), outbox, "dev-a")
    try:
        assert ingest.wait_subscribed(CONNECT_TIMEOUT_S)
        publisher.start()
        assert publisher.wait_drained(CONNECT_TIMEOUT_S), "the broker never acknowledged dev-a's windows"
        assert wait_for(lambda: store.count_windows("dev-a") == 3, CONNECT_TIMEOUT_S), ingest.stats.as_dict()
    finally:
        publisher.stop()
        ingest.stop()
        store.close()


def test_ota_client_reads_its_signed_commands_and_reports_over_mutual_tls(pki, conns, broker, tmp_path):
    """The hub identity sends dev-a an (expired) signed command; dev-a's OtaClient answers 'rejected' on its status."""
    import time

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tandem.edge_agent.ota.client import OtaClient, OtaClientConfig
    from tandem.protocols.ota import OtaCommand, decode_status, encode_command

    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    client = OtaClient(
        OtaClientConfig("dev-a", "cpu-x86", broker, tmp_path / "store", pem, tls=pki.device_files("dev-a")),
        on_switch=lambda model_dir: None,
    )
    hub = conns(pki.hub_client_files(), "hub-ota")
    assert hub.connect() == "connected"
    hub.subscribe(topics.all_devices(topics.OTA_STATUS))
    client.start()
    try:
        assert client.wait_subscribed(CONNECT_TIMEOUT_S)
        now = time.time()
        cmd = OtaCommand(
            rollout_id="ro-tls",
            action="install",
            model="digits",
            version="1.2.0",
            manifest_url="http://127.0.0.1:1/m",
            manifest_sha256="a" * 64,
            artifact_base_url="http://127.0.0.1:1/a",
            issued_at=now - 700,
            deadline=now - 600,
        )
        # expiry is judged on the hub's clock, estimated from the commands' issued_at: this device has
        # heard the hub's time before (in step with its own), so a command held 700 s is seen as expired
        client.hub_clock.observe(now, now)
        hub.publish(topics.ota_cmd_topic("dev-a"), encode_command(cmd, key))
        topic, payload = hub.messages.get(timeout=CONNECT_TIMEOUT_S)
        status = decode_status(payload, topics.parse_topic(topic).device_id)
        assert (status.device_id, status.rollout_id, status.step) == ("dev-a", "ro-tls", "rejected")
    finally:
        client.stop()
