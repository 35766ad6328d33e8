"""MQTT topic names: the one place that spells `tandem/v1/...`.

Every topic is `tandem/v1/{scope}/{kind}` where scope is a device id (or HUB_SCOPE
for fleet-wide hub events). Builders validate the device id so a hostile or buggy id
can never inject wildcards or extra levels; `parse_topic` validates what arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.protocols.errors import ContractError

__all__ = [
    "ACL_USERNAME",
    "BRIDGE_CLIENT_ID_PREFIX",
    "DEFAULT_SHARE_GROUP",
    "DEVICE_CLIENT_ID_PREFIXES",
    "DEVICE_PUBLISHES",
    "DEVICE_READS",
    "EVENTS",
    "HARD_EXAMPLES",
    "HUB_SCOPE",
    "KINDS",
    "MAX_DEVICE_ID_CHARS",
    "OTA_CMD",
    "OTA_STATUS",
    "PREFIX",
    "ParsedTopic",
    "SITE_IDENTITY_PREFIX",
    "STATUS",
    "TELEMETRY",
    "TELEMETRY_RESEND",
    "TopicError",
    "all_devices",
    "check_device_id",
    "device_acl_patterns",
    "device_topic",
    "events_topic",
    "hard_examples_topic",
    "hub_acl_topics",
    "mqtt_url_uses_tls",
    "ota_cmd_topic",
    "ota_status_topic",
    "parse_mqtt_url",
    "parse_topic",
    "shared",
    "site_acl_topics",
    "site_bridge_topics",
    "site_identity",
    "status_topic",
    "telemetry_resend_topic",
    "telemetry_topic",
]

PREFIX = "tandem/v1"
MAX_DEVICE_ID_CHARS = 128
HUB_SCOPE = "_hub"  # not a valid device id (device ids may not start with '_')
DEFAULT_SHARE_GROUP = "tandem-hub"

TELEMETRY = "telemetry"
STATUS = "status"
OTA_CMD = "ota/cmd"
OTA_STATUS = "ota/status"
EVENTS = "events"
HARD_EXAMPLES = "hard_examples"
TELEMETRY_RESEND = "telemetry/resend"
KINDS = (TELEMETRY, STATUS, OTA_CMD, OTA_STATUS, EVENTS, HARD_EXAMPLES, TELEMETRY_RESEND)

_FORBIDDEN = ("+", "#", "/", "\x00")


class TopicError(ContractError):
    """A device id or topic is not one Tandem accepts; the message says why."""


def check_device_id(device_id: str) -> str:
    """Return `device_id` if it is safe as one topic level, else raise TopicError."""
    if not isinstance(device_id, str) or not device_id:
        raise TopicError("device id: must be a non-empty string")
    if len(device_id) > MAX_DEVICE_ID_CHARS:
        raise TopicError(f"device id: {len(device_id)} characters, the limit is {MAX_DEVICE_ID_CHARS}")
    bad = [c for c in _FORBIDDEN if c in device_id]
    if bad:
        raise TopicError(f"device id {device_id!r}: may not contain {' '.join(repr(c) for c in bad)}")
    if device_id[0] in "$_" or not device_id.isprintable():
        raise TopicError(f"device id {device_id!r}: may not start with '$' or '_' or hold control characters")
    return device_id


def _topic(device_id: str, kind: str) -> str:
    return f"{PREFIX}/{check_device_id(device_id)}/{kind}"


def telemetry_topic(device_id: str) -> str:
    """Where a device publishes its telemetry windows (QoS 1)."""
    return _topic(device_id, TELEMETRY)


def status_topic(device_id: str) -> str:
    """A device's retained online/offline status; its last will says offline."""
    return _topic(device_id, STATUS)


def ota_cmd_topic(device_id: str) -> str:
    """Hub -> device OTA commands."""
    return _topic(device_id, OTA_CMD)


def ota_status_topic(device_id: str) -> str:
    """Device -> hub OTA progress."""
    return _topic(device_id, OTA_STATUS)


def telemetry_resend_topic(device_id: str) -> str:
    """Hub -> device: send these telemetry windows again (protocols.resend; QoS 1)."""
    return _topic(device_id, TELEMETRY_RESEND)


def hard_examples_topic(device_id: str) -> str:
    """Device -> hub uploads of low-confidence inputs (QoS 1, from the agent's outbox)."""
    return _topic(device_id, HARD_EXAMPLES)


def device_topic(device_id: str, kind: str) -> str:
    """The topic of `kind` (one a device publishes) for `device_id`: the outbox routes rows by kind."""
    if kind not in DEVICE_PUBLISHES:
        raise TopicError(f"topic kind {kind!r} is not one a device publishes ({', '.join(DEVICE_PUBLISHES)})")
    return _topic(device_id, kind)


def events_topic(device_id: str | None = None) -> str:
    """Events about one device, or (None) fleet-wide hub events such as drift alerts."""
    if device_id is None:
        return f"{PREFIX}/{HUB_SCOPE}/{EVENTS}"
    return _topic(device_id, EVENTS)


def all_devices(kind: str) -> str:
    """Subscription filter for `kind` from every device, e.g. `tandem/v1/+/telemetry`."""
    if kind not in KINDS:
        raise TopicError(f"topic kind {kind!r} is not one of {', '.join(KINDS)}")
    return f"{PREFIX}/+/{kind}"


def shared(topic_filter: str, group: str = DEFAULT_SHARE_GROUP) -> str:
    """MQTT 5 shared subscription: the broker hands each message to one member of `group`."""
    if not group or any(c in group for c in _FORBIDDEN):
        raise TopicError(f"share group {group!r}: must be non-empty without '+', '#' or '/'")
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class ParsedTopic:
    scope: str  # a device id, or HUB_SCOPE
    kind: str

    @property
    def device_id(self) -> str | None:
        return None if self.scope == HUB_SCOPE else self.scope


def parse_topic(topic: str) -> ParsedTopic:
    """Split a received topic into (device id, kind); raise TopicError on anything else."""
    if not isinstance(topic, str) or not topic.startswith(PREFIX + "/"):
        raise TopicError(f"topic {topic!r}: does not start with {PREFIX}/")
    rest = topic[len(PREFIX) + 1 :]
    scope, sep, kind = rest.partition("/")
    if not sep or kind not in KINDS:
        raise TopicError(f"topic {topic!r}: unknown kind {kind!r}")
    if scope == HUB_SCOPE:
        if kind != EVENTS:
            raise TopicError(f"topic {topic!r}: the hub scope only carries {EVENTS}")
        return ParsedTopic(scope, kind)
    return ParsedTopic(check_device_id(scope), kind)


_MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` -> (host, port); ports default to 1883 / 8883.

    Whether to use TLS is `mqtt_url_uses_tls(url)`; protocols.tls applies it.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url or "")
    if parts.scheme not in _MQTT_PORTS or not parts.hostname:
        raise TopicError(f"mqtt url {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    try:
        port = parts.port or _MQTT_PORTS[parts.scheme]
    except ValueError as exc:
        raise TopicError(f"mqtt url {url!r}: bad port") from exc
    return parts.hostname, port


def mqtt_url_uses_tls(url: str) -> bool:
    """True for mqtts://."""
    return (url or "").lower().startswith("mqtts://")


# -- broker ACL patterns (cloud_hub.mqtt_security writes them into Mosquitto's acl_file) ----------

# `%u` is Mosquitto's pattern substitution for the username, which is the client
# certificate's CN (set by the tandem_identity broker plugin); device ids can't hold '+', '#' or '/'.
ACL_USERNAME = "%u"
# A device's MQTT client ids are one of these followed by its certificate's CN, and nothing else
# (the broker refuses others, so no device can take over another's session). None is a prefix of
# another, so a client id names exactly one device.
DEVICE_CLIENT_ID_PREFIXES = ("tandem-agent-", "tandem-ota-", "tandem-sim-")
DEVICE_PUBLISHES = (TELEMETRY, STATUS, OTA_STATUS, EVENTS, HARD_EXAMPLES)
DEVICE_READS = (OTA_CMD, TELEMETRY_RESEND)


def device_acl_patterns() -> tuple[list[str], list[str]]:
    """(write patterns, read patterns) for any device: only its own `tandem/v1/%u/...` topics."""
    return (
        [f"{PREFIX}/{ACL_USERNAME}/{k}" for k in DEVICE_PUBLISHES],
        [f"{PREFIX}/{ACL_USERNAME}/{k}" for k in DEVICE_READS],
    )


def hub_acl_topics() -> list[str]:
    """What the hub's own identity may read and write: everything under the prefix."""
    return [f"{PREFIX}/#"]


# -- site brokers bridged to the centre (cloud_hub.site_bridge writes the bridge, mqtt_security the ACL) --

# A site bridge's certificate CN: this prefix and the site name. It starts with '_' like HUB_SCOPE, so no
# device certificate can carry it; its MQTT client id at the centre is BRIDGE_CLIENT_ID_PREFIX + CN.
SITE_IDENTITY_PREFIX = "_site-"
BRIDGE_CLIENT_ID_PREFIX = "tandem-bridge-"


def site_identity(site: str) -> str:
    """The certificate CN (and centre-side MQTT username) of `site`'s bridge; the site name obeys the
    device-id rule (one topic level, printable, no wildcards)."""
    try:
        check_device_id(site)
    except TopicError as exc:
        raise TopicError(str(exc).replace("device id", "site name", 1)) from None
    return SITE_IDENTITY_PREFIX + site


def site_bridge_topics() -> tuple[list[str], list[str]]:
    """(site -> centre filters, centre -> site filters): what a device publishes goes up, what it reads
    comes down. The two sets share no topic, so a message can never loop between the brokers."""
    return [all_devices(k) for k in DEVICE_PUBLISHES], [all_devices(k) for k in DEVICE_READS]


def site_acl_topics() -> tuple[list[str], list[str]]:
    """(write, read) topics of a site bridge's identity at the centre: the same filters as its bridge.
    A site may speak for any device (the centre does not know which devices a site holds)."""
    return site_bridge_topics()
