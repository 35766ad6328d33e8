"""The hub's telemetry side with a real Mosquitto: bad messages are counted and never fatal,
redeliveries change nothing, and a drift alert reaches the /events topic, a webhook and REST."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import paho.mqtt.client as mqtt
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tandem.cloud_hub.telemetry import DriftConfig, Hysteresis, TelemetryIngestService, TelemetryServiceConfig
from tandem.cloud_hub.telemetry import routes
from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import encode_window
from tandem.protocols.topics import events_topic, parse_mqtt_url, telemetry_topic
from telemetry_fixtures import needs_mosquitto
from waiting import wait_for

EDGES = [-0.5, 0.0, 0.5]
REFERENCE = {
    "inputs": {"x": {"mean": {"edges": EDGES, "counts": [250, 250, 250, 250]}}},
    "classes": {"counts": [500, 500]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")


class Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["content-length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def windows(device: str, n: int, shift: float, t0: float) -> list[bytes]:
    rng = np.random.default_rng(len(device))
    agg = WindowAggregator(device, MODEL, profile="cpu-x86", tags={"site": "lyon"}, config=WindowConfig(), now=t0)
    out = []
    for i in range(n):
        for _ in range(50):
            x = rng.normal(shift, 0.3, size=(1, 16))
            agg.record("edge", 2.0, 0.9, int(rng.integers(0, 2)), {"x": x})
        w = agg.close(t0 + i + 1)
        w.sequence = i + 1
        out.append(encode_window(w))
    return out


def publish_all(url: str, messages: list[tuple[str, bytes]]) -> None:
    host, port = parse_mqtt_url(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=mqtt.MQTTv5)
    client.connect(host, port)
    client.loop_start()
    try:
        for info in [client.publish(topic, payload, qos=1) for topic, payload in messages]:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


@needs_mosquitto
def test_bad_messages_are_counted_duplicates_ignored_and_drift_alerts_everywhere(mosquitto, tmp_path):
    http = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    Webhook.received.clear()
    events: list[dict] = []
    host, port = parse_mqtt_url(mosquitto.url)
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-events", protocol=mqtt.MQTTv5)
    listener.on_message = lambda c, u, m: events.append(json.loads(m.payload))
    listener.connect(host, port)
    listener.loop_start()
    listener.subscribe(events_topic(), qos=1)

    drift = DriftConfig(
        span_s=30,
        baseline_s=60,
        bucket_s=1,
        min_samples=100,
        min_requests=50,
        cohort_tags=("site",),
        distribution=Hysteresis(open_above=0.25, close_below=0.1, k_open=2, k_close=2),
    )
    config = TelemetryServiceConfig(
        eval_interval_s=3600, drift=drift, webhook_url=f"http://127.0.0.1:{http.server_port}/hook"
    )
    service = TelemetryIngestService(tmp_path / "hub", mosquitto.url, lambda name, version: MODEL, config).start()
    try:
        assert service.ingest.wait_subscribed(10)
        now = time.time()
        good = windows("dev-a", 6, shift=0.8, t0=now - 10) + windows("dev-b", 6, shift=0.8, t0=now - 10)
        big = b"\x0a" + b"\xff" * (limits.MAX_TELEMETRY_BYTES + 10)
        publish_all(
            mosquitto.url,
            [
                (telemetry_topic("dev-a"), b"not protobuf at all \xff\xfe"),
                (telemetry_topic("dev-x"), good[0]),  # dev-a's window on dev-x's topic
                (telemetry_topic("dev-a"), big),
                *[(telemetry_topic("dev-a"), p) for p in good[:6]],
                *[(telemetry_topic("dev-b"), p) for p in good[6:]],
                (telemetry_topic("dev-a"), good[2]),  # a redelivery
            ],
        )
        s = service.ingest.stats
        assert wait_for(lambda: s.bad + s.stored + s.duplicates >= 16, 15)
        stats = service.ingest.stats
        assert (stats.bad, stats.stored, stats.duplicates) == (3, 12, 1)
        assert service.store.device_sequences("dev-a") == [1, 2, 3, 4, 5, 6]

        opened = []
        for k in range(3):
            opened += [c for c in service.evaluate(time.time()).changes if c.transition == "opened"]
        assert [c.signal for c in opened] == ["input:x.mean"]
        assert wait_for(lambda: events and Webhook.received, 10)
        assert events[0]["type"] == "drift.alert.opened" and events[0]["signal"] == "input:x.mean"
        assert Webhook.received[0]["alert_id"] == events[0]["alert_id"]

        app = FastAPI()
        app.state.telemetry = service
        app.dependency_overrides[routes.router.dependencies[0].dependency] = lambda: None
        app.include_router(routes.router)
        client = TestClient(app)
        alerts = client.get("/v1/drift/alerts", params={"state": "open"}).json()
        assert alerts["total"] == 1 and alerts["items"][0]["cohort"]["tags"] == {"site": "lyon"}
        status = client.get("/v1/drift/status", params={"alert": "open"}).json()
        assert [r["signal"] for r in status["signals"]] == ["input:x.mean"] and status["ingest"]["bad"] == 3
        series = client.get("/v1/telemetry/devices/dev-b").json()["items"]
        assert [r["sequence"] for r in series] == [1, 2, 3, 4, 5, 6] and series[0]["edge"] == 50
        model = client.get("/v1/telemetry/models/toy", params={"bucket_s": 3600}).json()["items"]
        assert sum(r["windows"] for r in model) == 12 and sum(r["edge"] for r in model) == 600
        page = client.get("/v1/telemetry/windows", params={"device_id": "dev-a", "limit": 2}).json()
        assert page["total"] == 6 and len(page["items"]) == 2
    finally:
        service.stop()
        listener.disconnect()
        listener.loop_stop()
        http.shutdown()


@needs_mosquitto
def test_hub_with_telemetry_service_stores_an_agents_windows_behind_token_auth(tmp_path):
    """The wiring a deployment uses: Hub + HubTelemetry (its broker, its registry) and an agent's TelemetryService."""
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub
    from tandem.cloud_hub.telemetry.hub_service import HubTelemetry
    from tandem.edge_agent.telemetry import TelemetryService

    hub = Hub(HubConfig.from_keys({"data_dir": tmp_path / "hub", "http.port": 0, "mqtt.broker": "mosquitto"}))
    hub.add_service(HubTelemetry())
    hub.app.include_router(routes.router)
    hub.start(http=False)
    try:
        service = hub.app.state.telemetry
        assert service.ingest.wait_subscribed(10)
        with TelemetryService(hub.mqtt_url, "dev-h1", MODEL, tmp_path / "agent", window_s=60, profile="cpu-x86") as t:
            for i in range(3):
                for _ in range(10):
                    t.record("cloud" if i == 2 else "edge", 3.0, 0.8, 1, {"x": np.zeros((1, 4))})
                t.flush()
            assert t.publisher.wait_drained(10)
        assert wait_for(lambda: service.store.count_windows("dev-h1") == 3, 10)
        token = hub.tokens.create("ops", "read").token
        client = TestClient(hub.app)
        assert client.get("/v1/telemetry/devices/dev-h1").status_code == 401
        rows = client.get("/v1/telemetry/devices/dev-h1", headers={"Authorization": f"Bearer {token}"}).json()["items"]
        assert [(r["sequence"], r["edge"], r["cloud"]) for r in rows] == [(1, 10, 0), (2, 10, 0), (3, 0, 10)]
    finally:
        hub.stop()
