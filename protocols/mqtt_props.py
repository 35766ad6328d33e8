"""MQTT 5 properties of every Tandem message, by topic kind: the one place they are decided.

JSON, protobuf and framed binary payloads share one topic prefix, so each
message says what it is: ContentType, PayloadFormatIndicator (1 = UTF-8 text), a
`tandem-schema` UserProperty with the payload's schema version, and MessageExpiry
where a stale message is useless. `MESSAGE_SPECS` is also what docs/protocols.md's
topic table documents (a test compares the two with what a subscriber receives).
`publish_properties(kind)` builds paho's Properties (paho is imported only then, and an
MQTT 3.1.1 client simply passes None).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tandem.protocols import limits
from tandem.protocols import topics
from tandem.protocols.ota import OTA_SCHEMA_VERSION

__all__ = [
    "EVENTS_EXPIRY_S",
    "EVENTS_SCHEMA_VERSION",
    "HARD_EXAMPLES_SCHEMA_VERSION",
    "MESSAGE_SPECS",
    "MessageSpec",
    "RESEND_EXPIRY_S",
    "RESEND_SCHEMA_VERSION",
    "SCHEMA_PROPERTY",
    "STATUS_SCHEMA_VERSION",
    "properties_of",
    "publish_properties",
    "spec_for",
]

SCHEMA_PROPERTY = "tandem-schema"
STATUS_SCHEMA_VERSION = 1
EVENTS_SCHEMA_VERSION = 1
HARD_EXAMPLES_SCHEMA_VERSION = 1
EVENTS_EXPIRY_S = 3600  # a drift event nobody received within the hour is in REST anyway
RESEND_SCHEMA_VERSION = 1
RESEND_EXPIRY_S = 3600  # the hub asks again for a gap still open; a stale request only repeats work


@dataclass(frozen=True)
class MessageSpec:
    """How messages of one topic kind travel."""

    kind: str
    direction: str  # "device -> hub" or "hub -> device(s)"
    content_type: str
    utf8: bool  # PayloadFormatIndicator 1
    schema_version: int
    qos: int
    retain: bool
    expiry_s: int | None  # MessageExpiryInterval; None: kept until delivered
    payload: str  # what the bytes are, for the docs


MESSAGE_SPECS: dict[str, MessageSpec] = {
    s.kind: s
    for s in (
        MessageSpec(
            topics.TELEMETRY,
            "device -> hub",
            "application/x-protobuf; proto=tandem.telemetry.v1.TelemetryWindow",
            False,
            limits.TELEMETRY_SCHEMA_VERSION,
            1,
            False,
            None,
            "protobuf TelemetryWindow (protocols/telemetry.proto)",
        ),
        MessageSpec(
            topics.STATUS,
            "device -> hub",
            "application/json",
            True,
            STATUS_SCHEMA_VERSION,
            1,
            True,
            None,
            "JSON {state, device_id, at, ...}; the last will says offline",
        ),
        MessageSpec(
            topics.OTA_CMD,
            "hub -> device",
            "application/json",
            True,
            OTA_SCHEMA_VERSION,
            1,
            False,
            None,
            "JSON OTA command signed with the hub's release key (protocols/ota.py)",
        ),
        MessageSpec(
            topics.OTA_STATUS,
            "device -> hub",
            "application/json",
            True,
            OTA_SCHEMA_VERSION,
            1,
            False,
            None,
            "JSON OTA progress (protocols/ota.py)",
        ),
        MessageSpec(
            topics.EVENTS,
            "hub or device -> subscribers",
            "application/json",
            True,
            EVENTS_SCHEMA_VERSION,
            1,
            False,
            EVENTS_EXPIRY_S,
            "JSON hub event (drift alert opened/closed)",
        ),
        MessageSpec(
            topics.HARD_EXAMPLES,
            "device -> hub",
            "application/vnd.tandem.hard-example",
            False,
            HARD_EXAMPLES_SCHEMA_VERSION,
            1,
            False,
            None,
            "a JSON header line, a newline, then framed tensors (protocols/tensor_blob.py)",
        ),
        MessageSpec(
            topics.TELEMETRY_RESEND,
            "hub -> device",
            "application/json",
            True,
            RESEND_SCHEMA_VERSION,
            1,
            False,
            RESEND_EXPIRY_S,
            "JSON {sequences, hub_time}: send these windows again (protocols/resend.py)",
        ),
    )
}


def spec_for(kind: str) -> MessageSpec:
    spec = MESSAGE_SPECS.get(kind)
    if spec is None:
        raise topics.TopicError(f"topic kind {kind!r} has no message spec ({', '.join(MESSAGE_SPECS)})")
    return spec


@lru_cache(maxsize=None)
def publish_properties(kind: str, *, will: bool = False) -> Any:
    """paho `Properties` for a PUBLISH (or, with `will`, the last will) of topic kind `kind`; one shared,
    read-only object per kind (paho only reads it when packing)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    spec = spec_for(kind)
    props = Properties(PacketTypes.WILLMESSAGE if will else PacketTypes.PUBLISH)
    props.ContentType = spec.content_type
    props.PayloadFormatIndicator = 1 if spec.utf8 else 0
    props.UserProperty = [(SCHEMA_PROPERTY, str(spec.schema_version))]
    if spec.expiry_s is not None:
        props.MessageExpiryInterval = spec.expiry_s
    return props


def properties_of(message: Any) -> dict[str, Any]:
    """What a received paho message carried: content_type, utf8, schema, expiry_s (None when absent)."""
    props = getattr(message, "properties", None)
    user = dict(getattr(props, "UserProperty", None) or [])
    return {
        "content_type": getattr(props, "ContentType", None),
        "utf8": getattr(props, "PayloadFormatIndicator", None) == 1
        if props is not None and hasattr(props, "PayloadFormatIndicator")
        else None,
        "schema": user.get(SCHEMA_PROPERTY),
        "expiry_s": getattr(props, "MessageExpiryInterval", None),
    }
