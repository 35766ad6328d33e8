"""MQTT 5 conventions: the topic table in docs/protocols.md is what protocols.mqtt_props says and what a
subscriber receives from a real agent publisher on a real Mosquitto (properties, QoS, retain, last will)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from tandem.edge_agent.telemetry.outbox import Outbox
from tandem.edge_agent.telemetry.publisher import PublisherConfig, TelemetryPublisher
from tandem.protocols import topics
from tandem.protocols.mqtt_props import MESSAGE_SPECS, properties_of
from tandem.protocols.telemetry_codec import TelemetryWindow, encode_hard_example
from waiting import wait_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"
DEVICE = "conv-dev"


def doc_table() -> dict[str, dict[str, str]]:
    text = DOC.read_text()
    block = re.search(r"<!-- topic-table:.*?-->\n(.*?)<!-- /topic-table -->", text, re.S)
    assert block, "docs/protocols.md lost its topic table markers"
    lines = [ln for ln in block.group(1).strip().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    return {row["kind"]: row for row in rows}


def expected_row(kind: str) -> dict[str, str]:
    s = MESSAGE_SPECS[kind]
    return {
        "kind": kind,
        "direction": s.direction,
        "payload": s.payload,
        "ContentType": s.content_type,
        "UTF-8": "yes" if s.utf8 else "no",
        "tandem-schema": str(s.schema_version),
        "QoS": str(s.qos),
        "retain": "yes" if s.retain else "no",
        "MessageExpiry (s)": str(s.expiry_s) if s.expiry_s is not None else "none",
    }


def test_the_doc_table_lists_every_topic_kind_as_mqtt_props_defines_it():
    table = doc_table()
    assert set(table) == set(MESSAGE_SPECS) == set(topics.KINDS)
    for kind in MESSAGE_SPECS:
        assert table[kind] == expected_row(kind), kind


def test_a_subscriber_sees_what_the_table_says_from_a_real_publisher(mosquitto, tmp_path):  # noqa: F811
    table = doc_table()
    seen: dict[str, list] = {}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        kind = topics.parse_topic(msg.topic).kind
        with lock:
            seen.setdefault(kind, []).append(msg)

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="conv-sub", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe([(topics.all_devices(kind), 1) for kind in topics.KINDS])
    sub.loop_start()
    box = Outbox(tmp_path / "outbox.sqlite")
    publisher = TelemetryPublisher(
        PublisherConfig(mosquitto.url, keepalive_s=5), box, DEVICE, status_info={"model": "toy", "version": "1.0.0"}
    )
    try:
        w = TelemetryWindow(
            schema_version=1, device_id=DEVICE, model_name="toy", model_version="1.0.0", start_unix=1.0, end_unix=2.0
        )
        box.append(w)
        box.append_message(topics.OTA_STATUS, b'{"step": "watching"}')
        box.append_message(
            topics.HARD_EXAMPLES,
            encode_hard_example({"device_id": DEVICE, "id": 1, "model": "toy", "version": "1.0.0"}, b"{}\n"),
        )
        publisher.start()
        publisher.wake()
        assert wait_for(
            lambda: all(k in seen for k in (topics.STATUS, topics.TELEMETRY, topics.OTA_STATUS, topics.HARD_EXAMPLES)),
            15,
        ), f"only {sorted(seen)} arrived"
        # the last will: drop the socket without DISCONNECT, the broker publishes the offline status
        publisher._client.socket().close()
        assert wait_for(lambda: any(b'"offline"' in m.payload for m in seen[topics.STATUS]), 15), "no last will"
    finally:
        publisher.stop()
        sub.loop_stop()
        sub.disconnect()
        box.close()
    for kind in (topics.STATUS, topics.TELEMETRY, topics.OTA_STATUS, topics.HARD_EXAMPLES):
        row = table[kind]
        for msg in seen[kind]:
            got = properties_of(msg)
            assert got["content_type"] == row["ContentType"], (kind, got)
            assert got["utf8"] == (row["UTF-8"] == "yes"), (kind, got)
            assert got["schema"] == row["tandem-schema"], (kind, got)
            assert got["expiry_s"] == (None if row["MessageExpiry (s)"] == "none" else int(row["MessageExpiry (s)"]))
            assert msg.qos == int(row["QoS"])
    will = [m for m in seen[topics.STATUS] if b'"offline"' in m.payload][0]
    assert properties_of(will)["content_type"] == "application/json"  # the will carries the properties too
