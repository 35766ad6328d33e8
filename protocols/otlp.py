"""Optional OTLP export of Tandem's spans (agent request, fallback call, hub inference).

Spans are made by our own W3C trace-context code (`protocols.tracing`), so tracing costs nothing
without a collector; with `[tracing] otlp_endpoint` set, finished spans are handed to
OpenTelemetry's BatchSpanProcessor and OTLP/gRPC exporter (`pip install tandem[otel]`), which
send them in the background. The agent and the hub share this one adapter.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from tandem.protocols.config_loader import ConfigValueError
from tandem.protocols.errors import ContractError
from tandem.protocols.tracing import SpanContext

__all__ = ["CLOSE_TIMEOUT_S", "KINDS", "FinishedSpan", "OtlpExporter", "TracingConfig", "TracingError", "exporter_for"]

log = logging.getLogger(__name__)

_ENDPOINT_RE = re.compile(r"^https?://[^/\s:]+(:\d{1,5})?/?$")
KINDS = ("server", "client", "internal")
CLOSE_TIMEOUT_S = 2.0  # at stop: what queued spans may add to a SIGTERM


class TracingError(ContractError):
    """Tracing is configured but cannot run (the OpenTelemetry SDK is not installed)."""


@dataclass(frozen=True)
class TracingConfig:
    """`[tracing]`: where finished spans go. No endpoint: spans are kept in memory only (hub) or not at all."""

    otlp_endpoint: str | None = None  # OTLP/gRPC collector, e.g. http://127.0.0.1:4317 (https:// for TLS)
    service_name: str | None = None  # default: tandem-hub / tandem-agent

    def __post_init__(self) -> None:
        if self.otlp_endpoint is not None and not _ENDPOINT_RE.match(self.otlp_endpoint):
            raise ConfigValueError(
                "tracing.otlp_endpoint",
                f"{self.otlp_endpoint!r} is not an OTLP/gRPC address (write http://host:4317, or https:// for TLS)",
            )
        if self.service_name is not None and not self.service_name.strip():
            raise ConfigValueError("tracing.service_name", "empty; leave it out for the default")


@dataclass(frozen=True)
class FinishedSpan:
    """One span as recorded: ids from protocols.tracing, wall-clock times in nanoseconds."""

    name: str
    context: SpanContext
    parent_span_id: str | None
    kind: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    error: str | None = None  # the status description when the span failed

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TracingError(f"span kind {self.kind!r} is not one of {', '.join(KINDS)}")


class OtlpExporter:
    """Batches finished spans to an OTLP/gRPC collector from a background thread; `export` never blocks
    on the network (a full queue drops spans, as OpenTelemetry's processor does)."""

    def __init__(self, config: TracingConfig, default_service: str) -> None:
        if config.otlp_endpoint is None:
            raise TracingError("tracing.otlp_endpoint is not set")
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise TracingError(
                f"tracing.otlp_endpoint is set but the OpenTelemetry SDK is not installed "
                f"(pip install 'tandem[otel]'): {exc}"
            ) from exc
        from importlib import metadata

        try:
            version = metadata.version("tandem")
        except metadata.PackageNotFoundError:
            version = "0"
        self.endpoint = config.otlp_endpoint
        self._resource = Resource.create({"service.name": config.service_name or default_service})
        self._scope = _scope("tandem", version)
        secure = config.otlp_endpoint.startswith("https://")
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=not secure), schedule_delay_millis=500
        )
        log.info("tracing: exporting spans to %s as %s", self.endpoint, config.service_name or default_service)

    def export(self, span: FinishedSpan) -> None:
        if span.context.sampled:
            self._processor.on_end(self._readable(span))

    def flush(self, timeout_s: float = 5.0) -> bool:
        return bool(self._processor.force_flush(int(timeout_s * 1000)))

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued, then stop the background thread, for at most `timeout_s`.

        OpenTelemetry's shutdown waits up to 30 s for an export in flight (the exporter's own deadline is
        10 s per try), which an unreachable collector would add to every SIGTERM; spans still queued at
        the bound are dropped, as a full queue drops them.
        """
        done = threading.Thread(target=self._processor.shutdown, name="otlp-shutdown", daemon=True)
        done.start()
        done.join(max(0.0, timeout_s))
        if done.is_alive():
            log.warning("tracing: spans not sent to %s within %.1f s of closing; dropped", self.endpoint, timeout_s)

    def _readable(self, span: FinishedSpan) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags
        from opentelemetry.trace import SpanContext as OtelContext

        flags = TraceFlags(TraceFlags.SAMPLED if span.context.sampled else TraceFlags.DEFAULT)
        trace_id = int(span.context.trace_id, 16)
        parent = (
            OtelContext(trace_id, int(span.parent_span_id, 16), is_remote=True, trace_flags=flags)
            if span.parent_span_id
            else None
        )
        status = Status(StatusCode.ERROR, span.error) if span.error else Status(StatusCode.OK)
        kind = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}.get(span.kind, SpanKind.INTERNAL)
        return ReadableSpan(
            name=span.name,
            context=OtelContext(trace_id, int(span.context.span_id, 16), is_remote=False, trace_flags=flags),
            parent=parent,
            resource=self._resource,
            attributes=dict(span.attributes),
            kind=kind,
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self._scope,
        )


def _scope(name: str, version: str) -> Any:
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    return InstrumentationScope(name, version)


def exporter_for(config: TracingConfig | None, default_service: str) -> OtlpExporter | None:
    """The exporter `config` asks for, or None when it sets no endpoint."""
    if config is None or config.otlp_endpoint is None:
        return None
    return OtlpExporter(config, default_service)
