"""The agent's classed outbox: OTA status before hard examples before telemetry windows, per-class
quotas, lowest class dropped first under pressure (counted, reported), v1 files migrated in place,
and an outage with a real Mosquitto where the budget overflows."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tandem.edge_agent.hard_examples import HardExampleQueue, decode_tensors
from tandem.edge_agent.telemetry.outbox import (
    HARD_EXAMPLES,
    STATUS,
    TELEMETRY,
    ClassQuota,
    Outbox,
    OutboxError,
)
from tandem.edge_agent.telemetry.publisher import PublisherConfig
from tandem.edge_agent.telemetry.service import TelemetryService
from tandem.edge_agent.telemetry.window import ModelInfo
from tandem.protocols import topics
from tandem.protocols.ota import OtaStatus, decode_status, encode_status
from tandem.protocols.telemetry_codec import TelemetryWindow, decode_hard_example, decode_window
from telemetry_fixtures import Mosquitto, needs_mosquitto
from waiting import wait_for

MODEL = ModelInfo("toy", "1.0.0", {"inputs": {}, "classes": {"counts": [1, 1]}}, "toy-fp32")


def window() -> TelemetryWindow:
    w = TelemetryWindow(
        schema_version=1, device_id="dev-1", model_name="toy", model_version="1.0.0", start_unix=1.0, end_unix=2.0
    )
    w.requests.edge = 1
    return w


def status(seq: int, step: str = "watching") -> bytes:
    return encode_status(
        OtaStatus(
            "dev-1",
            seq,
            "ro-1",
            step,
            "ok",
            "toy",
            "1.1.0",
            "1.1.0",
            "1.0.0",
            health={"current": {"requests": 10, "fallback_rate": 0.1}},
        )
    )


def kinds(box: Outbox) -> list[int]:
    return [p.klass for p in box.next_batch(1000)]


def test_sender_order_is_class_then_age_and_each_row_keeps_its_topic_kind(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.append(window())
    box.append_message(topics.HARD_EXAMPLES, b"hx-1")
    box.append_message(topics.OTA_STATUS, status(1))
    box.append(window())
    box.append_message(topics.OTA_STATUS, status(2))
    batch = box.next_batch(10)
    assert [(p.klass, p.kind) for p in batch] == [
        (STATUS, "ota/status"),
        (STATUS, "ota/status"),
        (HARD_EXAMPLES, "hard_examples"),
        (TELEMETRY, "telemetry"),
        (TELEMETRY, "telemetry"),
    ]
    assert [decode_status(p.payload).seq for p in batch[:2]] == [1, 2]
    assert [decode_window(p.payload).sequence for p in batch[3:]] == [1, 2]  # windows keep their own stream
    assert [p.row for p in box.next_batch(10, exclude=[batch[0].row, batch[1].row])] == [p.row for p in batch[2:]]
    for p in batch:
        box.ack(p.row)
    assert len(box) == 0 and box.bytes == 0
    with pytest.raises(OutboxError, match="not a topic a device publishes"):
        box.append_message(topics.OTA_CMD, b"x")
    box.close()


def test_total_budget_drops_the_lowest_class_first_and_never_a_more_important_one(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=6)
    for _ in range(4):
        box.append(window())  # windows 1..4
    for i in range(3):
        box.append_message(topics.OTA_STATUS, status(i + 1))
    # 7 rows asked for, 6 allowed: the oldest window went, no status did
    assert kinds(box) == [STATUS] * 3 + [TELEMETRY] * 3
    assert [decode_window(p.payload).sequence for p in box.next_batch(10) if p.klass == TELEMETRY] == [2, 3, 4]
    box.append_many(topics.HARD_EXAMPLES, [b"a", b"b", b"c", b"d"])
    assert kinds(box) == [STATUS] * 3 + [HARD_EXAMPLES] * 3  # every window gave way, then the oldest example
    assert box.dropped() == {"status": 0, "hard_examples": 1, "telemetry": 4}
    # only more important data left: a new window is itself the one dropped (counted, its number used up)
    assert box.append(window()) == 5
    assert kinds(box) == [STATUS] * 3 + [HARD_EXAMPLES] * 3 and box.dropped()["telemetry"] == 5
    for i in range(3):  # statuses evict examples, never the reverse
        box.append_message(topics.OTA_STATUS, status(10 + i))
    assert kinds(box) == [STATUS] * 6 and box.dropped() == {"status": 0, "hard_examples": 4, "telemetry": 5}
    box.append_message(topics.OTA_STATUS, status(20))  # status over the whole budget: its own oldest go
    assert [decode_status(p.payload).seq for p in box.next_batch(10)] == [2, 3, 10, 11, 12, 20]
    assert box.dropped()["status"] == 1
    box.close()


def test_each_class_has_its_own_quota_in_rows_and_bytes(tmp_path):
    box = Outbox(
        tmp_path / "o.sqlite",
        max_rows=100,
        quotas={HARD_EXAMPLES: ClassQuota(max_rows=3, max_bytes=2500), STATUS: ClassQuota(50, 10_000)},
    )
    box.append_many(topics.HARD_EXAMPLES, [bytes([i]) * 1000 for i in range(4)])  # 4 KB into a 2.5 KB quota
    rows = box.next_batch(10)
    assert [p.payload[0] for p in rows] == [2, 3] and box.dropped()["hard_examples"] == 2
    assert box.room(HARD_EXAMPLES) == 1
    assert box.append_message(topics.HARD_EXAMPLES, b"x" * 3000) is None  # never fits: dropped at once
    assert box.dropped()["hard_examples"] == 3 and len(box) == 2
    box.append(window())
    stats = box.stats()
    assert stats["hard_examples"] == {"rows": 2, "bytes": 2000, "dropped": 3, "max_rows": 3, "max_bytes": 2500}
    assert stats["telemetry"]["rows"] == 1 and stats["status"]["rows"] == 0
    box.close()


def test_bytes_budget_counts_payload_bytes_across_classes(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=1000, max_bytes=5000, quotas={HARD_EXAMPLES: ClassQuota(1000, 5000)})
    for _ in range(20):
        box.append(window())
    window_bytes = box.bytes
    assert window_bytes < 5000 and len(box) == 20
    box.append_many(topics.HARD_EXAMPLES, [b"h" * 2400, b"h" * 2400])
    assert box.bytes <= 5000
    assert kinds(box).count(HARD_EXAMPLES) == 2 and box.dropped()["telemetry"] > 0
    box.close()


def test_drops_ride_on_later_windows_per_class_and_survive_reopen(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=2)
    box.append_many(topics.HARD_EXAMPLES, [b"1", b"2"])
    box.append_message(topics.OTA_STATUS, status(1))  # evicts the oldest example
    box.append(window())  # only more important rows: the window itself goes
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_rows=3)  # restarted with a bigger budget
    box.append(window())
    w = decode_window(box.next_batch(10)[-1].payload)
    assert w.sequence == 2
    assert dict(w.outbox_dropped) == {"hard_examples": 1, "telemetry": 1} and w.outbox_dropped_total == 1
    assert box.dropped_total == 1
    box.close()


def test_a_v1_outbox_file_is_migrated_in_place_and_keeps_its_backlog(tmp_path):
    path = tmp_path / "telemetry_outbox.sqlite"
    conn = sqlite3.connect(str(path), isolation_level=None)  # the schema and rows the v1 agent wrote
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, created_at REAL NOT NULL)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('last_sequence', 7), ('dropped_total', 4)")
    for seq in (6, 7):
        w = window()
        w.sequence = seq
        conn.execute("INSERT INTO outbox VALUES (?, ?, ?)", [seq, w.SerializeToString(), time.time()])
    conn.close()

    box = Outbox(path)
    assert len(box) == 2 and box.last_sequence == 7 and box.dropped_total == 4
    backlog = box.next_batch(10)
    assert [(p.row, p.klass, p.kind) for p in backlog] == [(6, TELEMETRY, "telemetry"), (7, TELEMETRY, "telemetry")]
    assert box.stats()["telemetry"]["bytes"] == sum(len(p.payload) for p in backlog)
    assert box.append(window()) == 8  # the window stream goes on, never reusing a number
    row = box.append_message(topics.OTA_STATUS, status(1))
    assert row not in (6, 7, 8) and box.next_batch(1)[0].row == row
    box.ack(6)
    box.close()
    box = Outbox(path)  # and a second open is a no-op migration
    assert len(box) == 3 and box.last_sequence == 8
    assert {p.row for p in box.next_batch(10)} == {7, 8, row}
    assert box.pending()[0][0] == 7  # the single-stream cursor API still works
    mode = box._conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = box._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # WAL, synchronous=FULL
    box.close()


def test_hard_examples_move_into_class_one_only_while_its_quota_has_room(tmp_path):
    queue = HardExampleQueue(tmp_path / "hard.sqlite", max_rows=50)
    for i in range(5):
        queue.put(
            {"x": np.full((1, 4), i, np.float32)},
            request_id=f"r{i}",
            model="toy",
            version="1.0.0",
            label=i % 2,
            confidence=0.3,
            source="cloud",
        )
    queue.flush()
    service = TelemetryService(
        "mqtt://127.0.0.1:1",
        "dev-1",
        MODEL,
        tmp_path,
        window_s=60,
        outbox_quotas={HARD_EXAMPLES: ClassQuota(3, 1 << 20)},
        hard_examples=queue,
    )
    try:
        assert service.move_hard_examples() == 3 and queue.depth() == 2  # quota full: the rest wait in the queue
        assert service.move_hard_examples() == 0
        rows = service.outbox.next_batch(10)
        header, blob = decode_hard_example(rows[0].payload)
        assert header["device_id"] == "dev-1" and header["request_id"] == "r0" and header["model"] == "toy"
        assert decode_tensors(blob)["x"].tolist() == [[0.0] * 4]
        assert [decode_hard_example(p.payload)[0]["id"] for p in rows] == [1, 2, 3]
        service.outbox.ack(rows[0].row)
        assert service.move_hard_examples() == 1 and queue.depth() == 1
    finally:
        service.outbox.close()
        queue.close()


class Recorder:
    """A persistent-session subscriber to one device's topics: what arrived, in order, by kind."""

    def __init__(self, broker: Mosquitto, device: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-recorder", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{topics.PREFIX}/{device}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.2, 1.0)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # the broker queues for it while the test restarts the broker
        self.client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.got.append((topics.parse_topic(msg.topic).kind, msg.payload))

    def of(self, kind: str) -> list[bytes]:
        with self.lock:
            return [p for k, p in self.got if k == kind]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@needs_mosquitto
def test_outage_beyond_budget_delivers_every_status_first_and_drops_only_old_windows(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    recorder = Recorder(broker, "dev-1")
    queue = HardExampleQueue(tmp_path / "hard.sqlite", max_rows=100)
    service = TelemetryService(
        broker.url,
        "dev-1",
        MODEL,
        tmp_path / "agent",
        window_s=3600,
        outbox_max_rows=40,
        hard_examples=queue,
        publisher=PublisherConfig(broker.url, reconnect_min_s=0.1, reconnect_max_s=0.5),
    )
    service.start()
    try:
        assert recorder.subscribed.wait(10)
        assert wait_for(lambda: service.publisher.connected, 10)
        broker.stop()  # the outage
        assert wait_for(lambda: not service.publisher.connected, 10)
        n_status, n_hard, n_windows = 12, 8, 60
        for i in range(n_windows):
            service.record("edge" if i % 3 else "cloud", 2.0, 0.8, 1)
            service.flush()
            if i % 5 == 0 and i // 5 < n_status:
                service.enqueue(topics.OTA_STATUS, status(1000 + i // 5, "watching"))
            if i % 7 == 0 and i // 7 < n_hard:
                queue.put(
                    {"x": np.full((1, 8), i, np.float32)},
                    request_id=f"r{i}",
                    model="toy",
                    version="1.0.0",
                    label=1,
                    confidence=0.2,
                    source="cloud",
                )
                queue.flush()
                service.move_hard_examples()
        stats = service.outbox.stats()
        assert len(service.outbox) == 40  # the budget held through the outage
        assert stats["status"]["rows"] == n_status and stats["hard_examples"]["rows"] == n_hard
        assert service.outbox.dropped() == {
            "status": 0,
            "hard_examples": 0,
            "telemetry": n_windows - (40 - n_status - n_hard),
        }

        broker.start()  # the broker returns: everything left arrives
        assert wait_for(
            lambda: (
                len(recorder.of("telemetry")) >= 40 - n_status - n_hard and len(recorder.of("ota/status")) >= n_status
            ),
            30,
        ), recorder.got[-3:]
        assert wait_for(lambda: len(service.outbox) == 0, 10)
        statuses = [decode_status(p) for p in recorder.of("ota/status")]
        assert sorted({s.seq for s in statuses}) == [1000 + i for i in range(n_status)]  # every class-0 message
        hard = {decode_hard_example(p)[0]["id"] for p in recorder.of("hard_examples")}
        assert hard == set(range(1, n_hard + 1))
        windows = {decode_window(p).sequence: decode_window(p) for p in recorder.of("telemetry")}
        kept = n_windows - service.outbox.dropped()["telemetry"]
        assert sorted(windows) == list(range(n_windows - kept + 1, n_windows + 1))  # the oldest windows went
        newest = windows[n_windows]
        assert newest.outbox_dropped_total == n_windows - kept == dict(newest.outbox_dropped)["telemetry"]
        assert "status" not in newest.outbox_dropped  # nothing else was ever dropped
        order = [k for k, _ in recorder.got]
        backlog = order[order.index("ota/status") :]
        assert max(i for i, k in enumerate(backlog) if k == "ota/status") < min(
            i for i, k in enumerate(backlog) if k == "telemetry"
        )  # statuses went first
        # and after the outage the next window reports the drops too
        service.record("edge", 1.0, 0.9, 1)
        service.flush()
        assert wait_for(lambda: n_windows + 1 in {decode_window(p).sequence for p in recorder.of("telemetry")}, 10)
        last = decode_window(recorder.of("telemetry")[-1])
        assert last.outbox_dropped_total == n_windows - kept
    finally:
        service.stop(drain_timeout_s=1)
        queue.close()
        recorder.stop()
        broker.stop()


def test_per_class_gauges_render_on_the_agents_metrics_page(tmp_path):
    from tandem.edge_agent.metrics import AgentMetrics

    service = TelemetryService("mqtt://127.0.0.1:1", "dev-1", MODEL, tmp_path, window_s=60, outbox_max_rows=2)
    try:
        metrics = AgentMetrics()
        service.register_metrics(metrics)
        for _ in range(2):
            service.enqueue(topics.OTA_STATUS, status(1))
        service.record("edge", 1.0, 0.9, 1)
        service.flush()  # only statuses left: the window itself is dropped
        page = metrics.render()
        assert "tandem_agent_outbox_status_rows 2" in page and "tandem_agent_outbox_telemetry_dropped_total 1" in page
        assert "tandem_agent_outbox_hard_examples_dropped_total 0" in page
        assert "# TYPE tandem_agent_outbox_telemetry_dropped_total counter" in page
    finally:
        service.outbox.close()
