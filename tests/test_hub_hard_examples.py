"""Hard examples from the agent's queue to the hub's store: MQTT class 1 -> SQLite -> REST (.npz).

The device side is the agent's real HardExampleQueue and TelemetryService; the hub is a Hub with its
default services on a real Mosquitto. The tensor-index checks are pure and tested on their own.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.cloud_hub.hard_examples import (
    HardExampleError,
    HardExampleStore,
    decode_tensor_index,
    decode_upload,
    to_npz,
)
from tandem.edge_agent.hard_examples import encode_tensors
from tandem.protocols.telemetry_codec import TelemetryDecodeError, encode_hard_example
from telemetry_fixtures import MOSQUITTO, Mosquitto
from waiting import wait_for

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")


def _upload(device: str, example_id: int, inputs: dict, model: str = "digits", version: str = "1.0.0") -> bytes:
    return encode_hard_example(
        {
            "device_id": device,
            "id": example_id,
            "model": model,
            "version": version,
            "label": 3,
            "confidence": 0.41,
            "source": "edge",
            "request_id": f"r{example_id}",
        },
        encode_tensors(inputs),
    )


# -- pure checks and the store ----------------------------------------------------------------------------


def test_tensor_index_accepts_the_agents_encoding_and_refuses_what_does_not_add_up():
    x = {"input": np.arange(12, dtype=np.float32).reshape(3, 4), "mask": np.array([True, False])}
    index, offset = decode_tensor_index(encode_tensors(x))
    assert [(t.name, t.dtype, t.shape) for t in index] == [("input", "<f4", (3, 4)), ("mask", "|b1", (2,))]
    with np.load(io.BytesIO(to_npz(encode_tensors(x))), allow_pickle=False) as npz:
        assert np.array_equal(npz["input"], x["input"]) and np.array_equal(npz["mask"], x["mask"])
    odd = {"file": np.ones(2, np.uint8), "allow_pickle": np.zeros(1, np.float64)}  # savez's own parameter names
    with np.load(io.BytesIO(to_npz(encode_tensors(odd))), allow_pickle=False) as npz:
        assert npz["file"].tolist() == [1, 1] and npz["allow_pickle"].tolist() == [0.0]
    good = encode_tensors({"a": np.zeros(4, np.float32)})
    head = good.partition(b"\n")[0]
    bad = [
        good[:-1],  # one byte short
        good + b"\0",  # one byte too many
        b'[["a", "|O", [1]]]\n' + b"\0" * 8,  # object dtype: would need pickle
        b'[["a", "<f4", [-1]]]\n',  # negative dimension
        b'[["a", "<f4", [4]], ["a", "<f4", [0]]]\n' + good.partition(b"\n")[2],  # repeated name
        b'[["a", "<f4", [4294967296, 4294967296]]]\n',  # absurd element count
        b"not json\n",
        head,  # no newline
        b"[" * 5000 + b"\n",  # deep nesting
        b'[["../../etc/x", "<f4", [4]]]\n' + good.partition(b"\n")[2],  # a name that is a path in the .npz
    ]
    for blob in bad:
        with pytest.raises(HardExampleError):
            decode_tensor_index(blob)


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=512), cut=st.integers(0, 600), flip=st.integers(0, 600))
def test_any_bytes_are_accepted_or_refused_with_the_decoders_own_error(data, cut, flip):
    valid = bytearray(_upload("cam-1", 1, {"x": np.arange(6, dtype=np.int16).reshape(2, 3)}))
    if flip < len(valid):
        valid[flip] ^= 0x5A
    for payload in (
        data,
        bytes(valid[:cut]),
        bytes(valid),
        b'{"device_id":"cam-1","id":1,"model":"m","version":"1"}\n' + data,
    ):
        try:
            record = decode_upload(payload, "cam-1")
        except TelemetryDecodeError:
            continue
        with np.load(io.BytesIO(to_npz(record.blob)), allow_pickle=False) as npz:
            assert sorted(npz.files) == sorted(t.name for t in record.tensors)


def test_an_upload_must_name_its_topics_device():
    payload = _upload("cam-1", 7, {"x": np.ones(2, np.float32)})
    assert decode_upload(payload, "cam-1").example_id == 7
    with pytest.raises(HardExampleError, match="names device 'cam-1' on 'cam-2'"):
        decode_upload(payload, "cam-2")


def test_store_is_idempotent_on_device_and_id_and_keeps_the_newest_max_rows(tmp_path):
    store = HardExampleStore.open(tmp_path, max_rows=3)
    try:
        records = [decode_upload(_upload("cam-1", i, {"x": np.full(2, i, np.float32)}), "cam-1") for i in range(5)]
        assert store.insert(records[:2], 1.0) == [True, True]
        assert store.insert(records[:2], 2.0) == [False, False]  # a redelivery stores nothing
        assert store.insert(records[2:], 3.0) == [True, True, True]
        items, total = store.list()
        assert total == 3 and [r["id"] for r in items] == [4, 3, 2]  # newest first, the oldest two aged out
        with np.load(io.BytesIO(store.npz("cam-1", 3))) as npz:
            assert npz["x"].tolist() == [3.0, 3.0]
        from tandem.cloud_hub.errors import NotFoundError

        with pytest.raises(NotFoundError, match="aged out"):
            store.npz("cam-1", 0)
    finally:
        store.close()


# -- agent-side TelemetryService -> Mosquitto -> the hub -----------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import httpx

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    root = tmp_path_factory.mktemp("hard-hub")
    broker = Mosquitto(root / "mosquitto").start()
    hub = Hub(
        HubConfig.from_keys(
            {
                "data_dir": root / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.url": broker.url,
                "rollouts.enabled": False,
            }
        )
    )
    try:
        hub.start()
        assert hub.hard_examples is not None and hub.hard_examples.wait_subscribed(10)
        assert hub.urls()["hard_examples"] == hub.http_url + "/v1/hard-examples"
        token = hub.tokens.create("reader", "read").token
        with httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
            hub.test_http, hub.test_broker = http, broker
            yield hub
    finally:
        hub.stop()
        broker.stop()


@pytest.mark.slow
@needs_mosquitto
def test_agent_hard_examples_reach_the_hub_once_and_come_back_as_npz(hub, tmp_path):
    from tandem.edge_agent.hard_examples import HardExampleQueue
    from tandem.edge_agent.telemetry import TelemetryService
    from tandem.edge_agent.telemetry.window import ModelInfo

    queue = HardExampleQueue(tmp_path / "hard.sqlite", max_rows=100)
    service = TelemetryService(
        hub.test_broker.url,
        "hx-dev",
        ModelInfo("digits", "1.0.0"),
        tmp_path / "agent",
        window_s=3600,
        hard_examples=queue,
    )
    rng = np.random.default_rng(0)
    sent = [rng.random((1, 64), dtype=np.float32) for _ in range(5)]
    try:
        for i, x in enumerate(sent):
            assert queue.put(
                {"input": x},
                request_id=f"req-{i}",
                model="digits",
                version="1.0.0",
                label=i,
                confidence=0.3,
                source="edge",
            )
        queue.flush()
        service.start()
        assert wait_for(lambda: hub.hard_examples.store.count() == 5, 20), hub.hard_examples.stats
        assert wait_for(lambda: queue.depth() == 0 and len(service.outbox) == 0, 10)
    finally:
        service.stop()
        queue.close()
    http = hub.test_http
    body = http.get("/v1/hard-examples", params={"device_id": "hx-dev", "limit": 2}).json()
    assert body["total"] == 5 and len(body["items"]) == 2
    item = body["items"][0]
    assert (item["device_id"], item["model"], item["version"], item["source"]) == ("hx-dev", "digits", "1.0.0", "edge")
    assert item["tensors"] == [{"name": "input", "dtype": "<f4", "shape": [1, 64]}]
    assert http.get("/v1/hard-examples", params={"model": "other"}).json()["total"] == 0
    by_request = {}
    for entry in http.get("/v1/hard-examples", params={"device_id": "hx-dev"}).json()["items"]:
        resp = http.get(f"/v1/hard-examples/hx-dev/{entry['id']}")
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/octet-stream"
        with np.load(io.BytesIO(resp.content), allow_pickle=False) as npz:
            by_request[entry["request_id"]] = npz["input"]
    assert all(np.array_equal(by_request[f"req-{i}"], x) for i, x in enumerate(sent))
    assert http.get("/v1/hard-examples/hx-dev/999999").status_code == 404


@pytest.mark.slow
@needs_mosquitto
def test_redeliveries_store_nothing_twice_and_garbage_is_counted_without_stopping_ingestion(hub):
    import paho.mqtt.client as mqtt

    from tandem.protocols.topics import hard_examples_topic, parse_mqtt_url

    ingest = hub.hard_examples
    before_bad, before = ingest.stats.bad, ingest.store.count()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(*parse_mqtt_url(hub.test_broker.url))
    client.loop_start()
    try:
        good = _upload("dup-dev", 1, {"x": np.ones(3, np.float32)})
        for payload, topic in [
            (good, "dup-dev"),
            (good, "dup-dev"),
            (b"garbage", "dup-dev"),
            (_upload("someone-else", 2, {"x": np.ones(1, np.float32)}), "dup-dev"),
            (good[:-2], "dup-dev"),
            (_upload("dup-dev", 3, {"x": np.ones(1, np.float32)}), "dup-dev"),
        ]:
            client.publish(hard_examples_topic(topic), payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    # the last message is a good one: once it is stored, everything before it has been judged
    assert wait_for(
        lambda: hub.test_http.get("/v1/hard-examples", params={"device_id": "dup-dev"}).json()["total"] == 2, 15
    )
    assert ingest.stats.bad - before_bad == 3 and ingest.store.count() - before == 2


def test_routes_answer_503_while_hard_example_ingestion_is_not_running(tmp_path):
    from fastapi.testclient import TestClient

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    hub = Hub(HubConfig.from_keys({"data_dir": tmp_path / "hub"}))
    try:
        token = hub.tokens.create("reader", "read").token
        with TestClient(hub.app) as http:
            resp = http.get("/v1/hard-examples", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 503 and "not running" in resp.json()["detail"]
            assert http.get("/v1/hard-examples").status_code == 401
            spec = json.loads(http.get("/openapi.json").text)
            assert "/v1/hard-examples/{device_id}/{example_id}" in spec["paths"]
    finally:
        hub.stop()
