"""Encode and decode telemetry windows and device status payloads, with limits.

The agent and the hub both go through here, so the latency bin edges and the size
checks live in one place; `decode_window` never trusts the peer.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from google.protobuf.message import DecodeError

from tandem.protocols import limits
from tandem.protocols.telemetry_pb2 import SourceCounts, SummaryCounts, TelemetryWindow
from tandem.protocols.topics import TopicError, check_device_id
from tandem.protocols.errors import ContractError

# Per-request latency, milliseconds: inner edges of open-ended bins (last bin is >= 5000 ms).
LATENCY_EDGES_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
SOURCES = ("edge", "cloud", "edge-degraded", "error")
SOURCE_FIELDS = {"edge": "edge", "cloud": "cloud", "edge-degraded": "edge_degraded", "error": "error"}

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"

__all__ = [
    "LATENCY_EDGES_MS",
    "SOURCES",
    "SOURCE_FIELDS",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "SourceCounts",
    "SummaryCounts",
    "TelemetryDecodeError",
    "TelemetryWindow",
    "decode_hard_example",
    "decode_status",
    "decode_window",
    "encode_hard_example",
    "encode_status",
    "encode_window",
    "window_to_dict",
]


class TelemetryDecodeError(ContractError):
    """A telemetry payload is malformed or over a limit; the message names what."""


def encode_window(window: TelemetryWindow) -> bytes:
    data = window.SerializeToString()
    if len(data) > limits.MAX_TELEMETRY_BYTES:
        raise TelemetryDecodeError(f"window: {len(data)} bytes, over MAX_TELEMETRY_BYTES={limits.MAX_TELEMETRY_BYTES}")
    return data


def decode_window(payload: bytes, topic_device: str | None = None) -> TelemetryWindow:
    """Parse and validate one window; `topic_device` (from the topic) must match its device_id."""
    if len(payload) > limits.MAX_TELEMETRY_BYTES:
        raise TelemetryDecodeError(
            f"payload: {len(payload)} bytes, over MAX_TELEMETRY_BYTES={limits.MAX_TELEMETRY_BYTES}"
        )
    window = TelemetryWindow()
    try:
        window.ParseFromString(payload)
    except (DecodeError, ValueError) as exc:
        raise TelemetryDecodeError(f"payload: not a TelemetryWindow ({exc})") from exc
    _validate(window, topic_device)
    return window


def _validate(w: TelemetryWindow, topic_device: str | None) -> None:
    if w.schema_version != limits.TELEMETRY_SCHEMA_VERSION:
        raise TelemetryDecodeError(f"schema_version: {w.schema_version} is not {limits.TELEMETRY_SCHEMA_VERSION}")
    try:
        check_device_id(w.device_id)
    except TopicError as exc:
        raise TelemetryDecodeError(str(exc)) from exc
    if topic_device is not None and topic_device != w.device_id:
        raise TelemetryDecodeError(f"device_id: {w.device_id!r} does not match the topic's {topic_device!r}")
    if w.sequence < 1:
        raise TelemetryDecodeError("sequence: must be >= 1")
    if not w.model_name or not w.model_version:
        raise TelemetryDecodeError("model_name, model_version: required")
    for name in ("start_unix", "end_unix", "latency_sum_ms", "latency_max_ms"):
        if not math.isfinite(getattr(w, name)):
            raise TelemetryDecodeError(f"{name}: not a finite number")
    if w.end_unix < w.start_unix:
        raise TelemetryDecodeError("end_unix: before start_unix")
    if len(w.latency_counts) not in (0, len(LATENCY_EDGES_MS) + 1):
        raise TelemetryDecodeError(
            f"latency_counts: {len(w.latency_counts)} bins, expected {len(LATENCY_EDGES_MS) + 1}"
        )
    if len(w.agreement_counts) not in (0, 20) or not 0.0 <= w.agreement_sum <= sum(w.agreement_counts):
        raise TelemetryDecodeError(
            f"agreement_counts: {len(w.agreement_counts)} bins (expected 20) and "
            f"agreement_sum {w.agreement_sum} must lie in [0, rows]"
        )
    if len(w.confidence_counts) not in (0, 20):
        raise TelemetryDecodeError(f"confidence_counts: {len(w.confidence_counts)} bins, expected 20")
    if len(w.class_counts) > limits.MAX_TELEMETRY_CLASSES:
        raise TelemetryDecodeError(f"class_counts: over MAX_TELEMETRY_CLASSES={limits.MAX_TELEMETRY_CLASSES}")
    if len(w.inputs) > limits.MAX_TELEMETRY_SUMMARIES:
        raise TelemetryDecodeError(f"inputs: over MAX_TELEMETRY_SUMMARIES={limits.MAX_TELEMETRY_SUMMARIES}")
    for s in w.inputs:
        if len(s.counts) > limits.MAX_HISTOGRAM_BINS:
            raise TelemetryDecodeError(
                f"inputs[{s.input}.{s.summary}]: over MAX_HISTOGRAM_BINS={limits.MAX_HISTOGRAM_BINS}"
            )
    if len(w.task_signals) > limits.MAX_TELEMETRY_SUMMARIES:
        raise TelemetryDecodeError(f"task_signals: over MAX_TELEMETRY_SUMMARIES={limits.MAX_TELEMETRY_SUMMARIES}")
    for t in w.task_signals:
        if len(t.counts) > limits.MAX_HISTOGRAM_BINS or len(t.signal) > limits.MAX_TAG_CHARS:
            raise TelemetryDecodeError(
                f"task_signals[{t.signal[: limits.MAX_TAG_CHARS]}]: over "
                f"MAX_HISTOGRAM_BINS={limits.MAX_HISTOGRAM_BINS} or a name over MAX_TAG_CHARS"
            )
    if len(w.outbox_dropped) > limits.MAX_TELEMETRY_TAGS or any(
        len(k) > limits.MAX_TAG_CHARS for k in w.outbox_dropped
    ):
        raise TelemetryDecodeError(
            f"outbox_dropped: over MAX_TELEMETRY_TAGS={limits.MAX_TELEMETRY_TAGS} classes "
            f"or a name over MAX_TAG_CHARS={limits.MAX_TAG_CHARS}"
        )
    if w.shadow_agree > w.shadow_samples:
        raise TelemetryDecodeError(f"shadow_agree: {w.shadow_agree} is over shadow_samples={w.shadow_samples}")
    if w.budget_spent > w.requests.edge_degraded:
        raise TelemetryDecodeError(
            f"budget_spent: {w.budget_spent} is over requests.edge_degraded="
            f"{w.requests.edge_degraded} (a budget-spent answer is a degraded one)"
        )
    if len(w.tags) > limits.MAX_TELEMETRY_TAGS:
        raise TelemetryDecodeError(f"tags: over MAX_TELEMETRY_TAGS={limits.MAX_TELEMETRY_TAGS}")
    for k, v in w.tags.items():
        if len(k) > limits.MAX_TAG_CHARS or len(v) > limits.MAX_TAG_CHARS:
            raise TelemetryDecodeError(f"tags: key or value over MAX_TAG_CHARS={limits.MAX_TAG_CHARS}")


def window_to_dict(w: TelemetryWindow) -> dict[str, Any]:
    """A JSON-friendly view (REST, logs)."""
    return {
        "device_id": w.device_id,
        "sequence": w.sequence,
        "model_name": w.model_name,
        "model_version": w.model_version,
        "variant": w.variant,
        "profile": w.profile,
        "tags": dict(w.tags),
        "start_unix": w.start_unix,
        "end_unix": w.end_unix,
        "requests": {src: getattr(w.requests, f) for src, f in SOURCE_FIELDS.items()},
        "samples": w.samples,
        "latency_edges_ms": LATENCY_EDGES_MS,
        "latency_counts": list(w.latency_counts),
        "latency_mean_ms": (w.latency_sum_ms / max(1, _total_requests(w))),
        "latency_max_ms": w.latency_max_ms,
        "confidence_counts": list(w.confidence_counts),
        "class_counts": list(w.class_counts),
        "class_overflow": w.class_overflow,
        "inputs": {f"{s.input}.{s.summary}": list(s.counts) for s in w.inputs},
        "task_signals": {t.signal: list(t.counts) for t in w.task_signals},
        "agreement_counts": list(w.agreement_counts),
        "agreement_sum": w.agreement_sum,
        "input_samples": w.input_samples,
        "outbox_dropped_total": w.outbox_dropped_total,
        "outbox_dropped": dict(w.outbox_dropped),
        "shadow_samples": w.shadow_samples,
        "shadow_agree": w.shadow_agree,
        "budget_spent": w.budget_spent,
    }


def _total_requests(w: TelemetryWindow) -> int:
    r = w.requests
    return r.edge + r.cloud + r.edge_degraded + r.error


def encode_hard_example(header: dict[str, Any], tensors: bytes) -> bytes:
    """One hard example for upload: a JSON header line (device_id, id, model, version, ...) then the tensors.

    `tensors` is edge_agent.hard_examples' encoding (a JSON index line, then raw C-order bytes);
    (device_id, id) is unique per device, so a receiver dedupes a redelivery on it.
    """
    for key in ("device_id", "id", "model", "version"):
        if key not in header:
            raise ValueError(f"hard example header: {key!r} is required")
    data = json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + tensors
    if len(data) > limits.MAX_MQTT_PAYLOAD_BYTES:
        raise TelemetryDecodeError(
            f"hard example: {len(data)} bytes, over MAX_MQTT_PAYLOAD_BYTES={limits.MAX_MQTT_PAYLOAD_BYTES}"
        )
    return data


def decode_hard_example(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, tensors blob); the header is checked, the tensors are left to their decoder."""
    if len(payload) > limits.MAX_MQTT_PAYLOAD_BYTES:
        raise TelemetryDecodeError(f"hard example: over MAX_MQTT_PAYLOAD_BYTES={limits.MAX_MQTT_PAYLOAD_BYTES}")
    head, sep, body = payload.partition(b"\n")
    try:
        header = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise TelemetryDecodeError(f"hard example: header is not JSON ({exc})") from exc
    if not sep or not isinstance(header, dict) or not isinstance(header.get("id"), int):
        raise TelemetryDecodeError("hard example: expected a JSON header with an integer id, a newline, then tensors")
    try:
        device_id = header.get("device_id")
        check_device_id(device_id if isinstance(device_id, str) else "")  # refused as "must be a non-empty string"
    except TopicError as exc:
        raise TelemetryDecodeError(f"hard example: {exc}") from exc
    return header, body


def encode_status(state: str, device_id: str, **info: Any) -> bytes:
    """The retained /status payload: small JSON so any MQTT tool can read it."""
    if state not in (STATUS_ONLINE, STATUS_OFFLINE):
        raise ValueError(f"status: {state!r} is not {STATUS_ONLINE} or {STATUS_OFFLINE}")
    return json.dumps(
        {"state": state, "device_id": device_id, "at": round(time.time(), 3), **info}, sort_keys=True
    ).encode()


def decode_status(payload: bytes) -> dict[str, Any]:
    if len(payload) > limits.MAX_STATUS_BYTES:
        raise TelemetryDecodeError(f"status: over MAX_STATUS_BYTES={limits.MAX_STATUS_BYTES}")
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise TelemetryDecodeError(f"status: not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("state") not in (STATUS_ONLINE, STATUS_OFFLINE):
        raise TelemetryDecodeError("status: expected an object with state online|offline")
    return data
