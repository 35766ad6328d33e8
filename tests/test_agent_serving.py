"""A real agent on ipc:// in a temp dir serving the digits edge model: local answers, health, metrics, CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import numpy as np
import pytest

from agent_fixtures import make_model_dir
from edge_agent import Agent, AgentClient, AgentConfig, AsyncAgentClient
from hardware_profiles.runtimes import load_session


@pytest.fixture(scope="module")
def digits_model_dir(digits_dir, tmp_path_factory):
    return make_model_dir(digits_dir / "edge.onnx", tmp_path_factory.mktemp("model") / "digits")


@pytest.fixture(scope="module")
def digits_test(digits_dir):
    data = np.load(digits_dir / "test.npz")
    return data["x"], data["y"]


@pytest.fixture(scope="module")
def agent(digits_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = AgentConfig(model_dir=digits_model_dir, endpoint=f"ipc://{run}/agent.sock", data_dir=run / "data",
                      http_port=0, device_id="test-device", threshold=0.0)
    with Agent(cfg) as a:
        yield a


def test_local_answers_match_the_runtime_called_directly(agent, digits_model_dir, digits_test):
    x, y = digits_test
    bare = load_session("onnxruntime", digits_model_dir / "variants" / "ort-fp32.onnx")
    want = bare.run({"input": x[:40]})[0]
    with AgentClient(agent.endpoint) as client:
        for i in range(40):
            answer = client.infer({"input": x[i:i + 1]}, return_outputs=True)
            assert answer.source == "edge"
            assert answer.labels == [int(np.argmax(want[i]))]
            assert answer.confidence[0] == pytest.approx(float(want[i].max()), abs=1e-5)
            np.testing.assert_allclose(answer.outputs["probabilities"], want[i:i + 1], atol=1e-6)
            assert answer.model_name == "digits" and answer.model_version == "1.0.0"
    accuracy = np.mean(np.argmax(want, axis=1) == y[:40])
    assert accuracy > 0.8


def test_a_request_may_carry_several_rows_and_positional_inputs(agent, digits_test):
    x, _ = digits_test
    with AgentClient(agent.endpoint) as client:
        answer = client.infer(x[:5])  # one array: matched to the only input by position
    assert len(answer.labels) == 5 and len(answer.confidence) == 5


def test_threshold_override_per_request_is_applied(agent, digits_test):
    x, _ = digits_test
    with AgentClient(agent.endpoint) as client:
        answer = client.infer(x[:1], threshold=1.0)
    # no hub configured: still an edge answer, but the policy saw it as not confident
    assert answer.source == "edge" and answer.threshold == pytest.approx(1.0)
    assert "no hub" in answer.detail
    agent.hard_examples.flush()
    assert agent.hard_examples.depth() >= 1


def test_async_client_keeps_many_requests_in_flight(agent, digits_test):
    x, _ = digits_test

    async def main():
        async with AsyncAgentClient(agent.endpoint) as client:
            answers = await asyncio.gather(*[client.infer(x[i:i + 1]) for i in range(64)])
        return answers

    answers = asyncio.run(main())
    with AgentClient(agent.endpoint) as client:
        expected = [client.infer(x[i:i + 1]).labels for i in range(64)]
    assert [a.labels for a in answers] == expected


def test_concurrent_threads_each_get_their_own_answers(agent, digits_test):
    x, _ = digits_test
    with AgentClient(agent.endpoint) as client:
        expected = [client.infer(x[i:i + 1]).labels[0] for i in range(50)]
    errors: list[str] = []

    def worker(offset: int) -> None:
        with AgentClient(agent.endpoint) as client:
            for k in range(50):
                i = (k + offset) % 50
                got = client.infer(x[i:i + 1]).labels[0]
                if got != expected[i]:
                    errors.append(f"row {i}: {got} != {expected[i]}")

    threads = [threading.Thread(target=worker, args=(7 * t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert max(agent.batcher.stats().batch_sizes) >= 1


def test_health_and_metrics_report_traffic(agent, digits_test):
    x, _ = digits_test
    with AgentClient(agent.endpoint) as client:
        client.infer(x[:1])
    body = json.loads(urllib.request.urlopen(agent.health_url + "/healthz", timeout=5).read())
    assert body["status"] == "ok" and body["model"] == "digits" and body["device_id"] == "test-device"
    text = urllib.request.urlopen(agent.health_url + "/metrics", timeout=5).read().decode()
    edge_count = [line for line in text.splitlines() if line.startswith('tandem_agent_requests_total{source="edge"}')]
    assert edge_count and int(edge_count[0].split()[-1]) >= 1
    assert 'tandem_agent_request_seconds_bucket{source="edge",le="+Inf"}' in text
    assert "tandem_agent_batch_queue_depth 0" in text
    assert "tandem_agent_fallback_ratio" in text
