"""One trace from the application through the agent to the hub, exported over OTLP.

The application sends its own `traceparent` through the local API; the agent's request span is its
child, the fallback gRPC call a child of that, the hub's ModelInfer a child of the call. Agent and hub
export with OpenTelemetry's OTLP/gRPC exporter ([tracing] otlp_endpoint) to a real OTLP endpoint on
127.0.0.1: a TraceService server built from the opentelemetry-proto messages, standing in for a
collector, which records what it is sent.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from dependencies import require_module
from tandem.cloud_hub.inference import InferenceServer
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.protocols.config_loader import ConfigValueError
from tandem.protocols.otlp import TracingConfig
from tandem.protocols.tracing import new_trace
from agent_fixtures import make_linear_softmax, make_model_dir

require_module("opentelemetry.sdk", "make test installs the [otel] extra")
trace_service = require_module("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_service_grpc = require_module("opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")


class _Collector(trace_service_grpc.TraceServiceServicer):
    """Receives OTLP ExportTraceServiceRequests and keeps each span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (the OTLP service's naming)
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "service": service,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex() or None,
                                "kind": span.kind,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                            }
                        )
        return trace_service.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


@pytest.fixture
def collector():
    servicer = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.endpoint = f"http://127.0.0.1:{port}"
    yield servicer
    server.stop(0)


def test_one_trace_spans_the_app_the_device_and_the_hub(tmp_path, collector):
    edge = make_model_dir(make_linear_softmax(tmp_path / "edge.onnx"), tmp_path / "edge", name="lin")
    cloud = make_model_dir(make_linear_softmax(tmp_path / "cloud.onnx", seed=1), tmp_path / "cloud", name="lin")
    hub = InferenceServer(cloud, tracing=TracingConfig(otlp_endpoint=collector.endpoint))
    hub.start()
    agent = None
    try:
        agent = Agent(
            AgentConfig.from_keys(
                {
                    "trust.allow_unsigned": True,
                    "model.dir": edge,
                    "server.endpoint": f"ipc://{tmp_path}/agent.sock",
                    "hard_examples.data_dir": tmp_path / "data",
                    "fallback.hub_url": hub.address,
                    "fallback.deadline_ms": 5000,
                    "server.device_id": "cam-otlp",
                    "policy.threshold": 1.0,  # never confident: every request asks the hub
                    "tracing.otlp_endpoint": collector.endpoint,
                }
            )
        ).start()
        app = new_trace()  # the application's own span, handed to the agent with the request
        with AgentClient(agent.endpoint) as client:
            answer = client.infer({"x": np.ones((1, 4), np.float32)}, traceparent=app.traceparent)
        assert answer.source == "cloud"
    finally:
        if agent is not None:
            agent.stop()  # flushes the agent's exporter
        hub.stop()  # and the hub's
    deadline = time.monotonic() + 10
    while len(collector.of_trace(app.trace_id)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    spans = collector.of_trace(app.trace_id)
    by_service = {(s["service"], s["kind"]): s for s in spans}
    assert len(spans) == 3, spans
    server, client = 2, 3  # opentelemetry.proto.trace.v1 Span.SpanKind
    request = by_service[("tandem-agent", server)]
    call = by_service[("tandem-agent", client)]
    hub_span = by_service[("tandem-hub", server)]
    assert request["parent"] == app.span_id  # the app's traceparent became the parent
    assert call["parent"] == request["span_id"]
    assert hub_span["parent"] == call["span_id"]
    assert hub_span["name"] == call["name"] == "inference.GRPCInferenceService/ModelInfer"
    # times nest as the calls did (one machine, one clock)
    assert request["start"] <= call["start"] <= hub_span["start"] <= hub_span["end"] <= call["end"] <= request["end"]


def test_a_bad_otlp_endpoint_is_refused_by_name():
    with pytest.raises(ConfigValueError, match="tracing.otlp_endpoint"):
        TracingConfig(otlp_endpoint="127.0.0.1:4317")
