"""A third-party v2 server that answers INTERNAL to a malformed request (as KServe's ModelServer does) is
alive: the agent's breaker must not open as if it were down. The server here is a real gRPC server
speaking the v2 service the way KServe's does for that case; the kserve package itself is not installed
in this project's environment."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest

from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.errors import FallbackUnavailable
from tandem.edge_agent.fallback import FallbackClient
from tandem.protocols import inference_pb2_grpc as pb_grpc


class _KServeLikeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def ModelInfer(self, request, context):  # noqa: N802 (gRPC's naming)
        context.abort(grpc.StatusCode.INTERNAL, "Exception calling application: unsupported datatype")


@pytest.fixture
def internal_server():
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_KServeLikeServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_internal_answers_do_not_open_the_breaker(internal_server):
    breaker = CircuitBreaker(failure_threshold=2, cool_down_s=60)
    with FallbackClient(internal_server, deadline_ms=5000, breaker=breaker) as client:
        for _ in range(5):
            with pytest.raises(FallbackUnavailable) as err:
                client.infer("m", {"x": np.ones((1, 4), np.float32)}, device_id="d", model_version="1.0.0")
            assert err.value.reason == "rejected" and "INTERNAL" in str(err.value)
    assert breaker.state == "closed"
