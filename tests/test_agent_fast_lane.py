"""The fast lane (edge_agent/fast_lane.py) answers exactly as the general path would, or not at all.

Each request goes through the same InferenceService twice: with its lane (after the lane
has learnt the layout) and with the lane switched off. The replies must be the same
message but for latency_ms; requests the lane must not take (NaN, wrong sizes, bad ids,
unsure answers, outputs asked for) must get the general path's answer, errors included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent_fixtures import make_linear_softmax, make_model_dir
from tandem.edge_agent.agent import Agent
from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.fast_lane import all_finite, request_id_tail
from tandem.edge_agent.wire import RequestTemplates, encode_request
from tandem.protocols import local_api_pb2 as pb


def _agent(model_dir: Path, run: Path, overrides: dict | None = None) -> Agent:
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "server.endpoint": f"ipc://{run}/agent.sock",
            "hard_examples.data_dir": run / "data",
            "policy.threshold": 0.8,
            **(overrides or {}),
        }
    )
    agent = Agent(cfg).start()
    batcher = agent.service.batcher
    feeds = {
        spec.name: np.zeros([d if d > 0 else 1 for d in spec.shape], np.dtype(spec.dtype))
        for spec in agent.model.input_specs
    }
    for _ in range(30):  # until the batcher's runtime estimate puts this model on the inline path
        batcher.run(agent.model.runtime_feeds(feeds))
    return agent


def _reply(frames: list) -> pb.ReplyHeader:
    assert len(frames) == 1, "these requests do not ask for outputs"
    header = pb.ReplyHeader()
    header.ParseFromString(bytes(frames[0]))
    header.latency_ms = 0.0
    return header


def _both_paths(service, frames: list) -> tuple[pb.ReplyHeader, pb.ReplyHeader, bool]:
    """(reply with the lane, reply without it, whether the lane answered)."""
    lane = service.lane
    before = lane.answered
    with_lane = _reply(service.handle(frames))
    took = lane.answered > before
    service.lane = None
    try:
        general = _reply(service.handle(frames))
    finally:
        service.lane = lane
    return with_lane, general, took


@pytest.fixture(scope="module")
def digits_agent(digits_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("lane")
    model_dir = make_model_dir(digits_dir / "edge.onnx", run / "model", name="digits")
    agent = _agent(model_dir, run)
    yield agent, np.load(digits_dir / "test.npz")["x"].astype(np.float32)
    agent.stop()


def test_the_lane_replies_as_the_general_path_for_every_test_row(digits_agent):
    agent, rows = digits_agent
    service = agent.service
    templates = RequestTemplates()
    taken = 0
    for i, row in enumerate(rows[:200]):
        frames = templates.frames([row[None, :]], request_id=f"client-{i}")
        with_lane, general, took = _both_paths(service, frames)
        assert with_lane == general, f"row {i}"
        assert with_lane.request_id == f"client-{i}"
        taken += took
    # the first request teaches the lane; unsure rows (below 0.8) stay on the general path
    confident = sum(
        1 for row in rows[:200] if not _reply(service.handle(templates.frames([row[None, :]], request_id="x"))).detail
    )  # unsure ones say "no hub is configured"
    assert service.lane.plans == 1
    assert taken >= confident - 1 and taken > 150


@pytest.mark.parametrize("threshold", [None, 0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("mode", ["auto", "edge"])
def test_thresholds_and_modes_match_the_general_path(digits_agent, threshold, mode):
    agent, rows = digits_agent
    templates = RequestTemplates()
    taken = expected = 0
    for i, row in enumerate(rows[200:240]):
        frames = templates.frames(
            [row[None, :]],
            request_id=f"t-{i}",
            threshold=threshold,
            mode=pb.MODE_EDGE_ONLY if mode == "edge" else pb.MODE_AUTO,
        )
        with_lane, general, took = _both_paths(agent.service, frames)
        assert with_lane == general
        # the lane answers what the edge answers confidently, everything in edge-only mode, and the
        # rest goes to the general path; the first request of a new layout teaches the lane
        should = mode == "edge" or not general.detail  # unsure ones say "no hub is configured"
        if i > 0:
            assert took == should, (i, general)
        taken += took
        expected += should
    assert taken >= expected - 1 and (taken > 0 or expected <= 1), (taken, expected)


def test_ids_of_other_lengths_share_the_plan_and_bad_ids_are_refused(digits_agent):
    agent, rows = digits_agent
    service = agent.service
    templates = RequestTemplates()
    x = rows[:1]
    service.handle(templates.frames([x], request_id="short"))
    assert service.lane.new_prefix(templates.frames([x], request_id="q")[0], "q") is None  # planned: nothing new
    for rid in ("a", "x" * 100, "ünïcode-id"):
        with_lane, general, took = _both_paths(service, templates.frames([x], request_id=rid))
        assert took and with_lane == general and with_lane.request_id == rid
    head, tensor = templates.frames([x], request_id="abc")
    bad_utf8 = head[:-3] + b"\xff\xfe\xfd"  # same length byte, not UTF-8: the general path's error
    reply = _reply(service.handle([bad_utf8, tensor]))
    assert reply.source == pb.SOURCE_ERROR and reply.error.code == "bad_request"


def test_requests_the_lane_must_not_take_get_the_general_answer(digits_agent):
    agent, rows = digits_agent
    service = agent.service
    templates = RequestTemplates()
    x = rows[:1].copy()
    service.handle(templates.frames([x], request_id="learn"))
    nan = x.copy()
    nan[0, 3] = np.nan
    inf = x.copy()
    inf[0, 0] = -np.inf
    cases = {
        "nan": templates.frames([nan], request_id="r1"),
        "inf": templates.frames([inf], request_id="r2"),
        "short frame": [templates.frames([x], request_id="r3")[0], bytes(255)],
        "extra frame": [*templates.frames([x], request_id="r4"), bytes(256)],
    }
    lane, run = service.lane, service.lane._run_inline
    confident = np.eye(1, 10, 3, dtype=np.float32)
    lane._run_inline = lambda feeds: [confident]  # a model that would answer NaN confidently: the lane must check
    try:
        for name, frames in cases.items():
            assert lane.answer(frames, 0.0) == (None, None), name
    finally:
        lane._run_inline = run
    for name, frames in cases.items():
        with_lane, general, took = _both_paths(service, frames)
        assert not took, name
        assert with_lane == general, name
        assert with_lane.source == pb.SOURCE_ERROR and with_lane.error.code == "bad_request", name
    assert "NaN" in _reply(service.handle(cases["nan"])).error.message


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_lane_finite_check_never_passes_a_nan_or_an_infinity(dtype):
    # the lane's cheap check (a dot of the values with themselves) may send a finite input the
    # general way, never a non-finite one the lane's way
    rng = np.random.default_rng(0)
    for size in (1, 10, 64, 1000, 27648):
        x = (rng.standard_normal(size) * 100).astype(dtype)
        assert all_finite(x) and all_finite(x.reshape(1, -1))
        for bad in (np.nan, np.inf, -np.inf):
            for at in {0, size // 2, size - 1}:
                y = x.copy()
                y[at] = bad
                assert not all_finite(y), (size, bad, at)
                assert not all_finite(y.reshape(1, -1)), (size, bad, at)
    big = np.full(8, np.finfo(dtype).max, dtype)  # finite: halves are summed in float64, exact; wider floats'
    assert all_finite(big) == (dtype == np.float16)  # squares overflow, so the general path decides for them
    assert all_finite(np.zeros(0, dtype))


def test_an_unsure_answer_runs_the_model_once_and_says_no_hub(digits_agent):
    agent, rows = digits_agent
    service = agent.service
    templates = RequestTemplates()
    service.handle(templates.frames([rows[:1]], request_id="learn", threshold=1.0))
    runs = service.batcher.stats().requests
    reply = _reply(service.handle(templates.frames([rows[1:2]], request_id="unsure", threshold=1.0)))
    assert service.batcher.stats().requests == runs + 1
    assert reply.source == pb.SOURCE_EDGE and "no hub" in reply.detail


def test_headers_not_ending_in_the_request_id_never_get_a_plan(digits_agent, tmp_path):
    agent, rows = digits_agent
    service = agent.service
    header = pb.RequestHeader()
    header.ParseFromString(encode_request([rows[:1]], request_id="")[0])
    # the same header with the id first: a valid request that a template-matching lane cannot recognise
    first = pb.RequestHeader(request_id="id-first").SerializeToString() + header.SerializeToString()
    plans = service.lane.plans
    reply = _reply(service.handle([first, memoryview(rows[:1].tobytes())]))
    assert reply.source == pb.SOURCE_EDGE and reply.request_id == "id-first"
    assert not request_id_tail(first, "id-first")
    assert service.lane.plans == plans


def test_batched_rows_and_a_dynamic_axis_match_the_general_path(tmp_path):
    model = make_linear_softmax(tmp_path / "linear.onnx", n_in=4, n_out=3)
    model_dir = make_model_dir(model, tmp_path / "model", name="linear")
    agent = _agent(model_dir, tmp_path, {"policy.threshold": 0.0})
    try:
        rng = np.random.default_rng(1)
        templates = RequestTemplates()
        for rows in (1, 3, 1, 5, 3):
            for i in range(5):
                x = rng.normal(size=(rows, 4)).astype(np.float32)
                with_lane, general, _ = _both_paths(agent.service, templates.frames([x], request_id=f"b{rows}-{i}"))
                assert with_lane == general
                assert len(with_lane.label) == rows
        assert agent.service.lane.plans == 3  # one per shape
    finally:
        agent.stop()


def test_an_agent_can_turn_the_lane_off(digits_dir, tmp_path):
    model_dir = make_model_dir(digits_dir / "edge.onnx", tmp_path / "model", name="digits")
    agent = _agent(model_dir, tmp_path, {"server.fast_lane": False})
    try:
        assert agent.service.lane is None
        reply = _reply(agent.service.handle(RequestTemplates().frames([np.zeros((1, 64), np.float32)], request_id="z")))
        assert reply.request_id == "z"
    finally:
        agent.stop()


def test_models_for_the_worker_thread_never_take_the_lane(digits_dir, tmp_path):
    from tandem.edge_agent.client import AgentClient

    model_dir = make_model_dir(digits_dir / "edge.onnx", tmp_path / "model", name="digits")
    agent = _agent(
        model_dir, tmp_path, {"batch.inline_max_us": 0, "batch.solo_inline_max_us": 0}
    )  # every run on the worker
    try:
        with AgentClient(agent.endpoint, timeout_s=10) as client:
            answers = [client.infer(np.full((1, 64), i / 10, np.float32)) for i in range(5)]
        assert [a.source for a in answers] == ["edge"] * 5
        assert agent.service.lane.answered == 0
    finally:
        agent.stop()
