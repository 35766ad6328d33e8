"""W3C Trace Context (`traceparent`) for calls that cross from a device to the hub.

The agent's fallback call starts (or continues) a trace and sends `traceparent` as gRPC
metadata; the hub's servicer continues it with its own span, so one trace id spans the
device and the hub whatever tracing backend (OTLP, logs) records the spans. Pure: no
OpenTelemetry dependency here; `tandem.cloud_hub.inference.tracing` exports when the SDK is
installed.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

__all__ = ["SpanContext", "TRACEPARENT", "new_trace", "parse_traceparent"]

TRACEPARENT = "traceparent"  # gRPC metadata key and HTTP header (lower case, as gRPC requires)
_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class SpanContext:
    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> "SpanContext":
        """A new span in the same trace (its parent is this one)."""
        return SpanContext(self.trace_id, _span_id(), self.sampled)


def new_trace(sampled: bool = True) -> SpanContext:
    return SpanContext(secrets.token_hex(16), _span_id(), sampled)


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The context in a `traceparent` value, or None when absent or malformed (then a new trace starts)."""
    match = _RE.match(value.strip().lower()) if isinstance(value, str) else None
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return SpanContext(match.group(1), match.group(2), bool(int(match.group(3), 16) & 1))


def _span_id() -> str:
    return secrets.token_hex(8)
