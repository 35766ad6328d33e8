"""The agent's spans: one per local request that takes the general path, one per fallback call.

The application may send its own W3C `traceparent` in the local request header; the request's
span is then its child, the fallback call (`edge_agent/fallback.py`) a child of the request's,
and the hub's ModelInfer a child of the call: one trace from the app through the device to the
hub. Spans are exported only when `[tracing] otlp_endpoint` is set (`protocols.otlp`); without
it the context still travels, so the hub's spans join the application's trace.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from tandem.protocols.otlp import FinishedSpan
from tandem.protocols.tracing import SpanContext, new_trace, parse_traceparent

log = logging.getLogger(__name__)

REQUEST_SPAN = "tandem.agent/Infer"
FALLBACK_SPAN = "inference.GRPCInferenceService/ModelInfer"


class SpanSink(Protocol):
    def export(self, span: FinishedSpan) -> None: ...

    def close(self) -> None: ...


def request_context(traceparent: str) -> SpanContext:
    """The request's span: a child of the application's, or the root of a new trace."""
    parent = parse_traceparent(traceparent) if traceparent else None
    return parent.child() if parent is not None else new_trace()


class AgentTracer:
    """Turns the service's timings (perf_counter) into finished spans for `sink`."""

    def __init__(self, sink: SpanSink, device_id: str) -> None:
        self.sink = sink
        self.device_id = device_id

    def request(
        self, span: SpanContext, traceparent: str, t0: float, model: str, version: str, source: str, request_id: str
    ) -> None:
        parent = parse_traceparent(traceparent) if traceparent else None
        self._export(
            REQUEST_SPAN,
            span,
            parent.span_id if parent is not None else None,
            "server",
            t0,
            time.perf_counter(),
            {
                "tandem.device_id": self.device_id,
                "tandem.model": model,
                "tandem.model_version": version,
                "tandem.source": source,
                "tandem.request_id": request_id,
            },
            "error" if source == "error" else None,
        )

    def fallback(
        self, span: SpanContext, parent: SpanContext, t0: float, t1: float, hub_model: str, error: str | None
    ) -> None:
        attributes = {"rpc.system": "grpc", "tandem.device_id": self.device_id, "tandem.hub_model": hub_model}
        self._export(FALLBACK_SPAN, span, parent.span_id, "client", t0, t1, attributes, error)

    def _export(
        self,
        name: str,
        span: SpanContext,
        parent_span_id: str | None,
        kind: str,
        t0: float,
        t1: float,
        attributes: dict[str, str],
        error: str | None,
    ) -> None:
        # perf_counter times -> wall clock: both ends shifted by the same offset
        offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
        try:
            self.sink.export(
                FinishedSpan(
                    name,
                    span,
                    parent_span_id,
                    kind,
                    offset_ns + int(t0 * 1e9),
                    offset_ns + int(t1 * 1e9),
                    attributes,
                    error,
                )
            )
        except Exception as exc:  # tracing must never fail a request
            log.warning("span export failed span=%s error=%s", name, exc)
