"""A hub that answers wrongly, slowly or with garbage: the agent keeps its own answers' latency and never
passes a wrong answer on as the cloud's.

Real parts: an Agent serving a small ONNX model, and real servers on loopback behind its fallback: gRPC v2
servers (grpcio) that answer for the wrong number of rows or after the deadline, and a TCP server that
answers every connection with bytes that are not HTTP/2.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from agent_fixtures import make_linear_softmax, make_model_dir
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc

DEADLINE_S = 0.5
SLOW_S = 3.0
X = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)


class _Misbehaving(pb_grpc.GRPCInferenceServiceServicer):
    """A v2 server whose ModelInfer answers one row whatever was asked ("rows"), or late ("slow")."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0

    def ModelInfer(self, request, context):  # noqa: N802 (gRPC's naming)
        self.calls += 1
        rows = request.inputs[0].shape[0]
        if self.mode == "slow":
            time.sleep(SLOW_S)
        y = np.full((1 if self.mode == "rows" else rows, 3), 1 / 3, np.float32)
        y[:, 2] = 0.9
        out = pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=list(y.shape))
        answer = pb.ModelInferResponse(model_name=request.model_name, outputs=[out])
        answer.raw_output_contents.append(y.tobytes())
        return answer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    return make_model_dir(make_linear_softmax(root / "lin.onnx"), root / "toy", name="toy")


@pytest.fixture
def grpc_hub() -> Iterator:
    servers: list[grpc.Server] = []

    def start(mode: str) -> tuple[str, _Misbehaving]:
        servicer = _Misbehaving(mode)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", servicer

    yield start
    for server in servers:
        server.stop(0)


@pytest.fixture
def garbage_hub() -> Iterator[str]:
    """Accepts every connection and answers it with an HTTP/1.1 error and random bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    junk = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nhello" + np.random.default_rng(1).bytes(4096)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(junk)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _agent(model_dir, tmp_path, url: str) -> Agent:
    return Agent(
        AgentConfig.from_keys(
            {
                "trust.allow_unsigned": True,
                "model.dir": model_dir,
                "server.endpoint": f"ipc://{tmp_path}/agent.sock",
                "hard_examples.data_dir": tmp_path / "data",
                "fallback.hub_url": url,
                "fallback.hub_model": "toy",
                "fallback.deadline_ms": DEADLINE_S * 1000,
                "fallback.breaker_failures": 2,
                "fallback.breaker_cooldown_s": 30,
                "server.device_id": "bad-hub",
                "health.http_port": 0,
            }
        )
    )


def test_an_answer_for_other_rows_is_not_passed_on_as_the_cloud_answer(model_dir, tmp_path, grpc_hub):
    url, servicer = grpc_hub("rows")
    with _agent(model_dir, tmp_path, url) as agent, AgentClient(agent.endpoint) as client:
        edge = client.infer(X, threshold=0.0)  # confident enough: the edge's own labels
        for _ in range(3):
            answer = client.infer(X, threshold=1.0)  # unsure: asks the hub, which answers 1 row for 4
            assert answer.source == "edge-degraded", (answer.source, list(answer.labels))
            assert "answered 1 row(s) for a request of 4" in answer.detail, answer.detail
            assert list(answer.labels) == list(edge.labels)
        assert servicer.calls == 3


def test_a_hub_slower_than_the_deadline_costs_one_deadline_per_call_until_the_breaker_opens(
    model_dir, tmp_path, grpc_hub
):
    url, servicer = grpc_hub("slow")
    with _agent(model_dir, tmp_path, url) as agent, AgentClient(agent.endpoint) as client:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            answer = client.infer(X, threshold=1.0)
            times.append(time.perf_counter() - t0)
            assert answer.source == "edge-degraded" and len(answer.labels) == 4
        # two calls wait out the deadline (never the hub's 3 s), then the breaker stops asking
        assert max(times[:2]) < DEADLINE_S + 1.0 and min(times[:2]) >= 0.9 * DEADLINE_S, times
        assert max(times[2:]) < DEADLINE_S / 2, times
        assert agent.breaker.state == "open" and servicer.calls == 2
        assert client.infer(X, threshold=0.0).source == "edge"  # confident answers never waited on the hub


def test_a_hub_that_answers_garbage_fails_fast_and_opens_the_breaker(model_dir, tmp_path, garbage_hub):
    with _agent(model_dir, tmp_path, garbage_hub) as agent, AgentClient(agent.endpoint) as client:
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            answer = client.infer(X, threshold=1.0)
            times.append(time.perf_counter() - t0)
            assert answer.source == "edge-degraded" and answer.detail.startswith("hub unavailable"), answer.detail
        assert max(times) < DEADLINE_S + 1.0, times
        assert agent.breaker.state == "open"
        body = urllib.request.urlopen(agent.health_url + "/healthz", timeout=5).read().decode()
        assert '"breaker": "open"' in body
