"""The hub's spans for inference calls: continue the caller's W3C trace, keep the recent ones.

ModelInfer reads `traceparent` from the gRPC metadata (protocols.tracing) and records a
server span that is a child of the device's fallback span, so one trace id covers the
device and the hub. Spans are kept in a bounded ring (`recent`), logged at DEBUG with
their trace id, and sent to an OTLP collector when `[tracing] otlp_endpoint` is set
(`protocols.otlp`, the `tandem[otel]` extra).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Protocol

from tandem.protocols.otlp import FinishedSpan
from tandem.protocols.tracing import TRACEPARENT, SpanContext, new_trace, parse_traceparent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Span:
    name: str
    context: SpanContext
    parent_span_id: str | None
    model: str
    code: str  # "OK" or the gRPC status code name
    duration_s: float


class SpanExporter(Protocol):
    """Where finished spans go besides the ring (protocols.otlp.OtlpExporter)."""

    def export(self, span: FinishedSpan) -> None: ...


class SpanRecorder:
    """The last `keep` server spans, thread-safe; each also goes to `exporter` when one is set."""

    def __init__(self, keep: int = 1024, exporter: SpanExporter | None = None) -> None:
        self._spans: deque[Span] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.exporter = exporter

    def start(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[SpanContext, str | None]:
        """This call's span context and its parent span id, from the caller's `traceparent` if it sent one."""
        value = next((v for k, v in (metadata or ()) if k == TRACEPARENT), None)
        parent = parse_traceparent(value.decode() if isinstance(value, bytes) else value)
        if parent is None:
            return new_trace(), None
        return parent.child(), parent.span_id

    def finish(
        self, name: str, context: SpanContext, parent_span_id: str | None, model: str, code: str, duration_s: float
    ) -> None:
        span = Span(name, context, parent_span_id, model, code, duration_s)
        with self._lock:
            self._spans.append(span)
        exporter = self.exporter
        if exporter is not None:
            end_ns = time.time_ns()
            try:
                exporter.export(
                    FinishedSpan(
                        name,
                        context,
                        parent_span_id,
                        "server",
                        end_ns - int(duration_s * 1e9),
                        end_ns,
                        {"rpc.system": "grpc", "tandem.grpc_code": code, "tandem.model": model},
                        None if code == "OK" else code,
                    )
                )
            except Exception as exc:  # tracing must never fail an inference
                log.warning("span export failed error=%s", exc)
        log.debug(
            "span name=%s trace_id=%s span_id=%s parent=%s model=%s code=%s duration_ms=%.2f",
            name,
            context.trace_id,
            context.span_id,
            parent_span_id,
            model,
            code,
            duration_s * 1000.0,
        )

    def recent(self) -> list[Span]:
        with self._lock:
            return list(self._spans)
