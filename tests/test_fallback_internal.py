"""A third-party v2 server that answers INTERNAL to a malformed request (as KServe's ModelServer does) is
alive: the agent's breaker must not open as if it were down. The server (tests/v2_stub_fixtures.py) is a
real gRPC server speaking the v2 service the way KServe's does for that case, in-process and fast;
tests/test_fallback_kserve.py shows KServe's own server answering so."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.errors import FallbackUnavailable
from tandem.edge_agent.fallback import FallbackClient


@pytest.fixture
def internal_server(aborting_v2_server) -> str:
    return aborting_v2_server(
        grpc.StatusCode.INTERNAL, lambda request: "Exception calling application: unsupported datatype"
    )


def test_internal_answers_do_not_open_the_breaker(internal_server):
    breaker = CircuitBreaker(failure_threshold=2, cool_down_s=60)
    with FallbackClient(internal_server, deadline_ms=5000, breaker=breaker) as client:
        for _ in range(5):
            with pytest.raises(FallbackUnavailable) as err:
                client.infer("m", {"x": np.ones((1, 4), np.float32)}, device_id="d", model_version="1.0.0")
            assert err.value.reason == "rejected" and "INTERNAL" in str(err.value)
    assert breaker.state == "closed"
