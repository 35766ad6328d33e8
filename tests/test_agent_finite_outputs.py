"""No garbage answers: finite inputs that overflow the model to NaN/inf get the
non_finite_output error (general path and fast lane alike), never a label with a NaN confidence;
a hub answering NaN leaves the edge answer, flagged degraded."""

from __future__ import annotations

import numpy as np
import pytest

from agent_fixtures import make_linear_softmax, make_model_dir
from tandem.edge_agent.agent import Agent
from tandem.edge_agent.client import AgentClient
from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.errors import NonFiniteOutputError
from tandem.edge_agent.service import check_finite
from tandem.edge_agent.wire import RequestTemplates
from tandem.protocols import local_api_pb2 as pb


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    run = tmp_path_factory.mktemp("finite")
    model_dir = make_model_dir(make_linear_softmax(run / "lin.onnx", n_in=4, n_out=3), run / "lin", name="lin")
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "policy.threshold": 0.0,
            "server.endpoint": f"ipc://{run}/agent.sock",
            "hard_examples.data_dir": run / "data",
        }
    )
    with Agent(cfg) as running:
        yield running


def test_finite_inputs_that_overflow_are_an_error_not_a_nan_confidence(agent):
    huge = np.full((2, 4), 3e38, np.float32)  # finite, but x @ W overflows to inf and softmax to NaN
    with AgentClient(agent.config.server.endpoint) as client:
        for _ in range(3):  # the first request teaches the fast lane the layout; the later ones meet it
            with pytest.raises(NonFiniteOutputError, match="non-finite value"):
                client.infer(huge)
        ok = client.infer(np.ones((2, 4), np.float32))
        assert np.isfinite(ok.confidence).all()


def test_the_fast_lane_answers_overflow_as_the_general_path_does(agent):
    service = agent.service
    templates = RequestTemplates()
    for i, x in enumerate([np.ones((1, 4), np.float32), np.full((1, 4), 3e38, np.float32)] * 3):
        frames = templates.frames([x], request_id=f"r-{i}")
        lane = service.lane
        with_lane = pb.ReplyHeader.FromString(bytes(service.handle(frames)[0]))
        service.lane = None
        try:
            general = pb.ReplyHeader.FromString(bytes(service.handle(frames)[0]))
        finally:
            service.lane = lane
        with_lane.latency_ms = general.latency_ms = 0.0
        assert with_lane == general


def test_a_hub_answer_with_nan_is_refused_by_name():
    check_finite([np.ones(3, np.float32)], ["y"], "the hub")
    with pytest.raises(NonFiniteOutputError, match="the hub answered 1 non-finite"):
        check_finite([np.array([0.5, np.nan], np.float32)], ["y"], "the hub")


def test_the_largest_batch_the_limits_allow_round_trips_and_one_more_row_is_refused(agent):
    from tandem.edge_agent.errors import BadRequestError
    from tandem.protocols.limits import MAX_BATCH_ROWS

    rng = np.random.default_rng(0)
    with AgentClient(agent.config.server.endpoint, timeout_s=60) as client:
        x = rng.normal(size=(MAX_BATCH_ROWS, 4)).astype(np.float32)
        reply = client.infer(x)
        assert len(reply.labels) == MAX_BATCH_ROWS and np.isfinite(reply.confidence).all()
        with pytest.raises(BadRequestError, match=f"at most {MAX_BATCH_ROWS} per request"):
            client.infer(np.ones((MAX_BATCH_ROWS + 1, 4), np.float32))
