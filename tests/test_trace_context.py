"""One W3C trace spans the device and the hub: the agent's fallback call carries `traceparent` and the
hub's ModelInfer span continues it (real InferenceServer and FallbackClient on loopback)."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.cloud_hub.inference import InferenceServer
from tandem.edge_agent.fallback import FallbackClient
from tandem.protocols.tracing import new_trace, parse_traceparent
from agent_fixtures import make_linear_softmax, make_model_dir


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace-hub")
    server = InferenceServer(make_model_dir(make_linear_softmax(root / "lin.onnx"), root / "lin", name="lin"))
    server.start()
    yield server
    server.stop()


def _hub_span(hub, trace_id: str):
    spans = [s for s in hub.servicer.spans.recent() if s.context.trace_id == trace_id]
    assert len(spans) == 1, f"hub spans of trace {trace_id}: {spans}"
    return spans[0]


def test_the_fallback_call_continues_the_devices_trace_into_the_hub(hub):
    device_request = new_trace()  # e.g. the application's own trace, handed to the agent
    with FallbackClient(hub.address, deadline_ms=5000) as client:
        result = client.infer(
            "lin",
            {"x": np.ones((1, 4), np.float32)},
            device_id="cam-1",
            model_version="1.0.0",
            traceparent=device_request.traceparent,
        )
    assert result.trace is not None and result.trace.trace_id == device_request.trace_id
    assert result.trace.span_id != device_request.span_id  # the fallback call is its own span...
    span = _hub_span(hub, device_request.trace_id)
    assert span.parent_span_id == result.trace.span_id  # ...and the hub's span is its child
    assert span.code == "OK" and span.model == "lin" and span.duration_s > 0


def test_without_a_trace_the_device_starts_one_and_failures_are_traced_too(hub):
    with FallbackClient(hub.address, deadline_ms=5000) as client:
        result = client.infer("lin", {"x": np.ones((2, 4), np.float32)}, device_id="cam-1", model_version="1.0.0")
        assert _hub_span(hub, result.trace.trace_id).parent_span_id == result.trace.span_id
        with pytest.raises(Exception):
            client.infer(
                "lin",
                {"x": np.ones((1, 5), np.float32)},
                device_id="cam-1",
                model_version="1.0.0",
                traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
            )
    assert _hub_span(hub, "ab" * 16).code == "INVALID_ARGUMENT"


def test_traceparent_parsing_refuses_what_the_spec_refuses():
    ctx = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert ctx is not None and ctx.sampled and ctx.traceparent.endswith("00f067aa0ba902b7-01")
    for bad in (
        None,
        "",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf9-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
    ):
        assert parse_traceparent(bad) is None
