"""A real agent on ipc:// in a temp dir serving the digits edge model: local answers, health, metrics, CLI."""

from __future__ import annotations

import asyncio
import json
import time
import threading
import urllib.request

import numpy as np
import pytest

from agent_fixtures import make_model_dir
from tandem.edge_agent import Agent, AgentClient, AgentConfig, AsyncAgentClient
from tandem.hardware_profiles.runtimes import load_session


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
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": digits_model_dir,
            "server.endpoint": f"ipc://{run}/agent.sock",
            "hard_examples.data_dir": run / "data",
            "health.http_port": 0,
            "server.device_id": "test-device",
            "policy.threshold": 0.0,
        }
    )
    with Agent(cfg) as a:
        yield a


def test_local_answers_match_the_runtime_called_directly(agent, digits_model_dir, digits_test):
    x, y = digits_test
    bare = load_session("onnxruntime", digits_model_dir / "variants" / "ort-fp32.onnx")
    want = bare.run({"input": x[:40]})[0]
    with AgentClient(agent.endpoint) as client:
        for i in range(40):
            answer = client.infer({"input": x[i : i + 1]}, return_outputs=True)
            assert answer.source == "edge"
            assert answer.labels == [int(np.argmax(want[i]))]
            assert answer.confidence[0] == pytest.approx(float(want[i].max()), abs=1e-5)
            np.testing.assert_allclose(answer.outputs["probabilities"], want[i : i + 1], atol=1e-6)
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
            answers = await asyncio.gather(*[client.infer(x[i : i + 1]) for i in range(64)])
        return answers

    answers = asyncio.run(main())
    with AgentClient(agent.endpoint) as client:
        expected = [client.infer(x[i : i + 1]).labels for i in range(64)]
    assert [a.labels for a in answers] == expected


def test_concurrent_threads_each_get_their_own_answers(agent, digits_test):
    x, _ = digits_test
    with AgentClient(agent.endpoint) as client:
        expected = [client.infer(x[i : i + 1]).labels[0] for i in range(50)]
    errors: list[str] = []

    def worker(offset: int) -> None:
        with AgentClient(agent.endpoint) as client:
            for k in range(50):
                i = (k + offset) % 50
                got = client.infer(x[i : i + 1]).labels[0]
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
    lb = ",".join(f'{k}="{v}"' for k, v in agent.metrics.current.labels.items())  # model, version, variant
    assert 'model="digits"' in lb
    edge_count = [
        line for line in text.splitlines() if line.startswith(f'tandem_agent_requests_total{{{lb},source="edge"}}')
    ]
    assert edge_count and int(edge_count[0].split()[-1]) >= 1
    assert f'tandem_agent_request_seconds_bucket{{{lb},source="edge",le="+Inf"}}' in text
    assert f"tandem_agent_batch_queue_depth{{{lb}}} 0" in text
    assert "tandem_agent_fallback_ratio" in text


@pytest.fixture(scope="module")
def ocr_model_dir(ocr_cls_model, tmp_path_factory):
    return make_model_dir(ocr_cls_model, tmp_path_factory.mktemp("model") / "ocr", name="ocr-cls")


def test_concurrent_requests_are_micro_batched_on_the_ocr_classifier(ocr_model_dir, tmp_path):
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": ocr_model_dir,
            "server.endpoint": f"ipc://{tmp_path}/ocr.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "policy.threshold": 0.0,
            "batch.window_us": 2000,
            "batch.max_batch": 8,
        }
    )
    rng = np.random.default_rng(0)
    xs = [rng.random((1, 3, 48, 192), dtype=np.float32) for _ in range(24)]
    bare = load_session("onnxruntime", ocr_model_dir / "variants" / "ort-fp32.onnx")
    want = [bare.run({"x": x})[0] for x in xs]

    async def main(endpoint):
        clients = [AsyncAgentClient(endpoint) for _ in range(8)]
        try:
            return await asyncio.gather(*[clients[i % 8].infer(x, return_outputs=True) for i, x in enumerate(xs)])
        finally:
            for c in clients:
                await c.close()

    with Agent(cfg) as agent:
        answers = asyncio.run(main(agent.endpoint))
        stats = agent.batcher.stats()
    for answer, w in zip(answers, want):
        (out,) = answer.outputs.values()
        np.testing.assert_allclose(out, w, atol=1e-4)
        assert answer.labels == [int(np.argmax(w))]
    assert stats.batches < len(xs) and max(stats.batch_sizes) > 1, stats


def test_overload_gets_an_error_reply_not_a_hang(ocr_model_dir, tmp_path):
    from tandem.edge_agent.errors import OverloadedError

    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": ocr_model_dir,
            "server.endpoint": f"ipc://{tmp_path}/ocr.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "policy.threshold": 0.0,
            "batch.max_batch": 1,
            "batch.max_queue": 1,
        }
    )
    x = np.zeros((1, 3, 48, 192), np.float32)

    async def main(endpoint):
        async with AsyncAgentClient(endpoint) as client:
            return await asyncio.gather(*[client.infer(x) for _ in range(12)], return_exceptions=True)

    with Agent(cfg) as agent:
        results = asyncio.run(main(agent.endpoint))
        overloaded = [r for r in results if isinstance(r, OverloadedError)]
        served = [r for r in results if not isinstance(r, Exception)]
        assert overloaded and served, results
        assert "queue is full" in str(overloaded[0])
        assert len(overloaded) + len(served) == len(results)
        with AgentClient(agent.endpoint) as client:
            assert client.infer(x).source == "edge"


def test_logits_model_scored_through_a_named_output_and_softmax(tmp_path):
    from agent_fixtures import make_linear_softmax
    from tandem.edge_agent.policy import softmax

    onnx_path = make_linear_softmax(tmp_path / "src" / "logits.onnx", n_in=4, n_out=3, softmax=False)
    model_dir = make_model_dir(onnx_path, tmp_path / "model", name="logits")
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "server.endpoint": f"ipc://{tmp_path}/l.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "policy.output": "y",
            "policy.transform": "softmax",
            "policy.kind": "margin",
            "policy.threshold": 0.0,
        }
    )
    x = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        answer = client.infer(x, return_outputs=True)
    p = np.sort(softmax(answer.outputs["y"])[0])
    assert answer.confidence[0] == pytest.approx(float(p[-1] - p[-2]), rel=1e-5)


def test_stop_with_requests_in_flight_is_clean(ocr_model_dir, tmp_path):
    from tandem.edge_agent.errors import AgentError

    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": ocr_model_dir,
            "server.endpoint": f"ipc://{tmp_path}/ocr.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "policy.threshold": 0.0,
        }
    )
    agent = Agent(cfg).start()
    x = np.zeros((4, 3, 48, 192), np.float32)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with AgentClient(agent.endpoint, timeout_s=1.0) as c:
                for _ in range(20):
                    c.infer(x)
        except AgentError as exc:  # unavailable once the agent is gone: expected
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    agent.stop()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert agent.server is None and agent.batcher is None
    agent.stop()  # twice is fine


def test_async_client_times_out_with_a_clear_error(tmp_path):
    from tandem.edge_agent.errors import AgentUnavailable

    async def main():
        async with AsyncAgentClient(f"ipc://{tmp_path}/nobody.sock", timeout_s=0.2) as client:
            with pytest.raises(AgentUnavailable, match="no answer from the agent"):
                await client.infer(np.zeros((1, 64), np.float32))

    asyncio.run(main())
