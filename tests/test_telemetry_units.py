"""The agent's window aggregator and outbox, topic names and the telemetry codec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.edge_agent.telemetry.outbox import Outbox
from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig
from tandem.protocols import limits
from tandem.protocols.drift import bin_counts, summarize_inputs
from tandem.protocols.telemetry_codec import (
    LATENCY_EDGES_MS,
    TelemetryDecodeError,
    TelemetryWindow,
    decode_status,
    decode_window,
    encode_status,
    encode_window,
)
from tandem.protocols.topics import (
    TopicError,
    all_devices,
    check_device_id,
    events_topic,
    ota_cmd_topic,
    parse_mqtt_url,
    parse_topic,
    shared,
    status_topic,
    telemetry_topic,
)

EDGES = [-1.0, 0.0, 1.0]
REF = {
    "inputs": {"x": {s: {"edges": EDGES, "counts": [1, 1, 1, 1]} for s in ("mean", "std", "max")}},
    "classes": {"counts": [5, 5, 5]},
}
MODEL = ModelInfo("toy", "1.2.3", REF, "toy-int8")


def agg(**kw) -> WindowAggregator:
    return WindowAggregator("dev-1", MODEL, profile="cpu-x86", tags={"site": "a"}, config=WindowConfig(**kw), now=100.0)


requests = st.lists(
    st.tuples(
        st.sampled_from(["edge", "cloud", "edge-degraded", "error"]),
        st.floats(0, 10_000),
        st.integers(1, 4),
    ),
    min_size=1,
    max_size=40,
)


@given(requests, st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_window_counts_add_up_to_what_was_recorded(reqs, seed):
    rng = np.random.default_rng(seed)
    a = agg()
    all_x = []
    for source, latency, rows in reqs:
        x = rng.normal(size=(rows, 6)).astype(np.float32)
        all_x.append(x)
        a.record(source, latency, confidence=rng.uniform(0, 1, rows), label=rng.integers(0, 5, rows), inputs={"x": x})
    w = a.close(110.0)
    n = len(reqs)
    samples = sum(r for _, _, r in reqs)
    assert sum((w.requests.edge, w.requests.cloud, w.requests.edge_degraded, w.requests.error)) == n
    assert sum(w.latency_counts) == n and len(w.latency_counts) == len(LATENCY_EDGES_MS) + 1
    assert sum(w.confidence_counts) == samples and sum(w.class_counts) == samples and w.samples == samples
    assert len(w.class_counts) >= 3  # the reference's classes, grown to the largest label seen
    x = np.concatenate(all_x)
    by_key = {(s.input, s.summary): list(s.counts) for s in w.inputs}
    for summary, values in summarize_inputs(x).items():
        if summary in ("mean", "std", "max"):
            assert by_key[("x", summary)] == bin_counts(values, EDGES)
    assert ("x", "l2") not in by_key  # only the summaries the manifest defines
    assert w.start_unix == 100.0 and w.end_unix == 110.0 and dict(w.tags) == {"site": "a"}


def test_no_raw_input_leaves_the_device():
    small, big = agg(), agg()
    small.record("edge", 1.0, 0.9, 1, {"x": np.zeros((1, 4), np.float32)})
    big.record("edge", 1.0, 0.9, 1, {"x": np.zeros((1, 100_000), np.float32)})
    a, b = small.close(101.0), big.close(101.0)
    a.sequence = b.sequence = 1
    assert len(encode_window(a)) == len(encode_window(b)) < 1000


def test_window_closes_at_max_requests_and_on_time_and_skips_empty():
    a = agg(window_s=10, max_requests=3)
    assert [a.record("edge", 1.0) for _ in range(3)] == [False, False, True]
    assert a.close(101.0).requests.edge == 3
    assert not a.due(110.0) and a.due(111.0)
    assert a.close(111.0) is None  # empty: nothing to send
    assert agg(emit_empty=True).close(101.0) is not None


def test_input_every_samples_summaries_and_bad_values_are_contained():
    a = agg(input_every=2)
    for _ in range(4):
        a.record("edge", float("nan"), [0.5, float("nan")], [1, -3, 99_999], {"x": np.ones((2, 3))})
    w = a.close(101.0)
    assert w.input_samples == 4  # 2 of 4 requests summarized, 2 rows each
    assert w.latency_counts[0] == 4 and w.latency_max_ms == 0.0
    assert sum(w.confidence_counts) == 4 and w.class_overflow == 8
    with pytest.raises(ValueError):
        a.record("somewhere", 1.0)


def window(seq: int = 1, **kw) -> TelemetryWindow:
    fields = dict(
        schema_version=limits.TELEMETRY_SCHEMA_VERSION,
        device_id="dev-1",
        sequence=seq,
        model_name="toy",
        model_version="1.0.0",
        start_unix=1.0,
        end_unix=2.0,
    )
    return TelemetryWindow(**{**fields, **kw})


def test_codec_round_trip_and_every_limit_is_enforced():
    w = window(7)
    w.confidence_counts.extend([1] * 20)
    assert decode_window(encode_window(w), topic_device="dev-1") == w
    bad = [
        (b"\xff\xff\xff", "not a TelemetryWindow"),
        (b"x" * (limits.MAX_TELEMETRY_BYTES + 1), "MAX_TELEMETRY_BYTES"),
        (window(0).SerializeToString(), "sequence"),
        (TelemetryWindow(schema_version=99, device_id="d", sequence=1).SerializeToString(), "schema_version"),
        (window(1, end_unix=0.5).SerializeToString(), "end_unix"),
        (window(1, confidence_counts=[1] * 3).SerializeToString(), "confidence_counts"),
        (window(1, class_counts=[1] * (limits.MAX_TELEMETRY_CLASSES + 1)).SerializeToString(), "MAX_TELEMETRY_CLASSES"),
        (window(1, latency_sum_ms=float("nan")).SerializeToString(), "finite"),
    ]
    for payload, needle in bad:
        with pytest.raises(TelemetryDecodeError, match=needle):
            decode_window(payload)
    with pytest.raises(TelemetryDecodeError, match="does not match"):
        decode_window(encode_window(w), topic_device="dev-2")
    w2 = window(1)
    w2.device_id = "a/b"
    with pytest.raises(TelemetryDecodeError, match="may not contain"):
        decode_window(w2.SerializeToString())


def test_topics_are_built_and_parsed_and_reject_injection():
    assert telemetry_topic("dev-1") == "tandem/v1/dev-1/telemetry"
    assert parse_topic(status_topic("dev-1")).device_id == "dev-1"
    assert parse_topic(ota_cmd_topic("d")).kind == "ota/cmd"
    assert parse_topic(events_topic()).device_id is None
    assert shared(all_devices("telemetry")) == "$share/tandem-hub/tandem/v1/+/telemetry"
    for bad in ("", "a/b", "a+", "#", "$sys", "_hub", "x" * 129, "a\x00b", "tab\there"):
        with pytest.raises(TopicError):
            check_device_id(bad)
    for bad in ("tandem/v1/dev/unknown", "other/v1/dev/telemetry", "tandem/v1/_hub/telemetry", "tandem/v1/+/telemetry"):
        with pytest.raises(TopicError):
            parse_topic(bad)
    assert parse_mqtt_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884)
    with pytest.raises(TopicError):
        parse_mqtt_url("http://x")


def test_status_payloads():
    data = decode_status(encode_status("online", "dev-1", model="toy"))
    assert data["state"] == "online" and data["model"] == "toy"
    with pytest.raises(TelemetryDecodeError):
        decode_status(b'{"state": "maybe"}')


def test_outbox_numbers_persist_across_reopen_and_acks_delete(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert [box.append(window()) for _ in range(3)] == [1, 2, 3]
    box.ack(2)
    assert [seq for seq, _ in box.pending()] == [1, 3]
    assert decode_window(box.pending()[0][1]).sequence == 1
    box.close()
    box = Outbox(tmp_path / "o.sqlite")  # a restarted agent
    box.ack(1)
    box.ack(3)
    assert len(box) == 0 and box.append(window()) == 4  # never reuses a number, even when empty
    box.close()


def test_full_outbox_drops_oldest_counts_and_reports_it(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_rows=3)
    for _ in range(5):
        box.append(window())
    assert [seq for seq, _ in box.pending()] == [3, 4, 5]
    assert box.dropped_total == 2
    newest = decode_window(box.pending()[-1][1])
    assert newest.outbox_dropped_total == 2  # the hub learns of the drop on the next window
    box.close()


def test_buffered_binning_matches_direct_binning_across_many_folds():
    """record() buffers values and bins them in bulk; over several folds the counts are exact."""
    rng = np.random.default_rng(3)
    a = agg(max_requests=10**6)
    xs, confs = [], []
    for _ in range(3000):
        x = rng.normal(size=(3, 5))
        c = rng.uniform(0, 1, 3)
        xs.append(x)
        confs.append(c)
        a.record("edge", 1.0, c, rng.integers(0, 3, 3), {"x": x})
    w = a.close(200.0)
    x = np.concatenate(xs)
    assert w.samples == 9000 and sum(w.class_counts) == 9000
    by_key = {(s.input, s.summary): list(s.counts) for s in w.inputs}
    assert by_key[("x", "std")] == bin_counts(summarize_inputs(x)["std"], EDGES)
    from tandem.protocols.drift import confidence_counts

    assert list(w.confidence_counts) == confidence_counts(np.concatenate(confs))


def test_hub_store_purges_by_age_in_chunks_and_keeps_newer(tmp_path):
    from tandem.cloud_hub.telemetry.store import StoredWindow, TelemetryStore

    store = TelemetryStore.open(tmp_path)
    items = []
    for seq in range(1, 26):
        w = window(seq)
        w.start_unix, w.end_unix = float(seq), float(seq) + 0.5
        items.append(StoredWindow(w, encode_window(w), "{}", float(seq) + 0.6))  # retention is on the hub's clock
    assert store.insert_windows(items) == [True] * 25
    assert store.insert_windows(items[:3]) == [False] * 3  # idempotent on (device, sequence)
    assert store.purge(before=20.0, chunk=4) == 19
    assert store.device_sequences("dev-1") == list(range(20, 26))
    store.close()
