"""A hub that serves no model by the agent's hub_model name answers NOT_FOUND to every fallback: that is a
configuration error, logged once, kept for /healthz, and it opens the breaker instead of passing for a live hub."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest

from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.errors import FallbackUnavailable
from tandem.edge_agent.fallback import FallbackClient


@pytest.fixture
def hub_without_the_model(aborting_v2_server) -> str:
    """A v2 server (tests/v2_stub_fixtures.py) that serves no model at all."""
    return aborting_v2_server(
        grpc.StatusCode.NOT_FOUND, lambda request: f"model {request.model_name!r} is not served here"
    )


def test_not_found_is_a_configuration_error_logged_once_and_opens_the_breaker(hub_without_the_model, caplog):
    breaker = CircuitBreaker(failure_threshold=3, cool_down_s=60)
    caplog.set_level(logging.ERROR, logger="tandem.edge_agent.fallback")
    reasons = []
    with FallbackClient(hub_without_the_model, deadline_ms=5000, breaker=breaker) as client:
        for _ in range(5):
            with pytest.raises(FallbackUnavailable) as err:
                client.infer("digits-edge", {"x": np.ones((1, 4), np.float32)}, device_id="d", model_version="1.0.0")
            reasons.append(err.value.reason)
        assert client.config_error and "serves no model 'digits-edge'" in client.config_error
        assert "--alias digits-edge=" in client.config_error and "hub_model" in client.config_error
    assert reasons[:3] == ["model_not_found"] * 3 and reasons[3:] == ["breaker_open"] * 2
    assert breaker.state == "open"
    errors = [r for r in caplog.records if "serves no model" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
