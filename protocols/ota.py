"""OTA wire contract: hub -> device commands (signed) and device -> hub status.

Both are small JSON objects with a schema version, validated strictly on decode.
A command is signed with the hub's release key through `protocols.signing` (the same
canonical form as manifests), so a device acts only on commands its hub issued, and
`deadline` plus `nonce` keep an old command from being replayed later.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tandem.protocols.limits import MAX_OTA_MESSAGE_BYTES
from tandem.protocols.manifest import ManifestError, parse_version
from tandem.protocols.signing import SignatureError, sign_manifest, verify_manifest
from tandem.protocols.errors import ContractError

__all__ = [
    "ACTIONS",
    "OTA_SCHEMA_VERSION",
    "OtaCommand",
    "OtaMessageError",
    "OtaStatus",
    "RESULTS",
    "STEPS",
    "TERMINAL_STEPS",
    "decode_command",
    "decode_status",
    "encode_command",
    "encode_status",
]

OTA_SCHEMA_VERSION = 1

ACTIONS = ("install", "rollback")
# Device-side steps, in the order an install walks them; the last four are terminal.
STEPS = (
    "received",
    "downloading",
    "verifying",
    "staged",
    "self_test",
    "switched",
    "watching",
    "committed",
    "rolled_back",
    "failed",
    "rejected",
)
TERMINAL_STEPS = ("committed", "rolled_back", "failed", "rejected")
RESULTS = ("ok", "error")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class OtaMessageError(ContractError):
    """An OTA command or status is malformed, unsigned, expired or not for this device."""


@dataclass(frozen=True)
class OtaCommand:
    """Install `model` `version` (or roll back from it); URLs are the hub's HTTP endpoints."""

    rollout_id: str
    action: str
    model: str
    version: str
    manifest_url: str
    manifest_sha256: str  # sha256 of the manifest's canonical bytes (protocols.signing)
    artifact_base_url: str  # a file is fetched from f"{artifact_base_url}/{sha256}"
    issued_at: float
    deadline: float  # unix seconds; a device refuses the command after this
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    watch_s: float | None = None  # the health-watch length for this rollout; None: the device's default
    schema_version: int = OTA_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_command(cmd: OtaCommand, key: Ed25519PrivateKey) -> bytes:
    """Validate, sign with the hub's key and serialise a command."""
    _check_command(cmd.to_dict())
    return json.dumps(sign_manifest(cmd.to_dict(), key), sort_keys=True).encode("utf-8")


def decode_command(payload: bytes | bytearray, trusted_key: Ed25519PublicKey, now: float | None = None) -> OtaCommand:
    """Check size, schema, signature and deadline; raise OtaMessageError naming what failed."""
    data = _load(payload, "command")
    try:
        verify_manifest(data, trusted_key)
    except SignatureError as exc:
        raise OtaMessageError(f"command: {exc}") from exc
    body = {k: v for k, v in data.items() if k != "signature"}
    _check_command(body)
    cmd = OtaCommand(**body)
    now = time.time() if now is None else now
    if now > cmd.deadline:
        raise OtaMessageError(f"command {cmd.rollout_id}: deadline passed {now - cmd.deadline:.0f}s ago")
    return cmd


def _check_command(d: Mapping[str, Any]) -> None:
    known = set(OtaCommand.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise OtaMessageError(f"command: unknown field(s) {', '.join(unknown)}")
    if d.get("schema_version") != OTA_SCHEMA_VERSION:
        raise OtaMessageError(f"command.schema_version: {d.get('schema_version')!r} is not {OTA_SCHEMA_VERSION}")
    for key in ("rollout_id", "model"):
        if not isinstance(d.get(key), str) or not _ID_RE.match(d[key]):
            raise OtaMessageError(f"command.{key}: {d.get(key)!r} is not a valid id")
    if d.get("action") not in ACTIONS:
        raise OtaMessageError(f"command.action: {d.get('action')!r} is not one of {', '.join(ACTIONS)}")
    try:
        parse_version(d.get("version"))  # type: ignore[arg-type]
    except ManifestError as exc:
        raise OtaMessageError(f"command.{exc}") from exc
    if not isinstance(d.get("manifest_sha256"), str) or not _SHA_RE.match(d["manifest_sha256"]):
        raise OtaMessageError("command.manifest_sha256: expected 64 lowercase hex characters")
    for key in ("manifest_url", "artifact_base_url"):
        value = d.get(key)
        if not isinstance(value, str) or not value.startswith(("http://", "https://")) or len(value) > 2048:
            raise OtaMessageError(f"command.{key}: {value!r} is not an http(s) URL")
    for key in ("issued_at", "deadline"):
        if isinstance(d.get(key), bool) or not isinstance(d.get(key), (int, float)):
            raise OtaMessageError(f"command.{key}: expected unix seconds")
    if d["deadline"] < d["issued_at"]:
        raise OtaMessageError("command.deadline: earlier than issued_at")
    if not isinstance(d.get("nonce"), str) or not _NONCE_RE.match(d["nonce"]):
        raise OtaMessageError("command.nonce: expected 8-64 URL-safe characters")
    watch = d.get("watch_s")
    if watch is not None and (
        isinstance(watch, bool) or not isinstance(watch, (int, float)) or not 0 <= watch <= 86400
    ):
        raise OtaMessageError(f"command.watch_s: {watch!r} must be seconds between 0 and 86400")


@dataclass(frozen=True)
class OtaStatus:
    """One step of one device's update; `seq` grows per device so the hub can drop duplicates."""

    device_id: str
    seq: int
    rollout_id: str
    step: str
    result: str
    model: str
    version: str  # the version the command is about
    active_version: str | None = None  # what the device serves after this step
    previous_version: str | None = None
    reason: str = ""
    health: dict[str, Any] = field(default_factory=dict)  # watch figures: {"baseline": {...}, "current": {...}}
    at: float = field(default_factory=time.time)
    schema_version: int = OTA_SCHEMA_VERSION

    @property
    def terminal(self) -> bool:
        return self.step in TERMINAL_STEPS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_status(status: OtaStatus) -> bytes:
    _check_status(status.to_dict())
    return json.dumps(status.to_dict(), sort_keys=True).encode("utf-8")


def decode_status(payload: bytes | bytearray, topic_device: str | None = None) -> OtaStatus:
    """Validate a status; `topic_device` (from the topic) must match the body's device id."""
    data = _load(payload, "status")
    _check_status(data)
    status = OtaStatus(**data)
    if topic_device is not None and status.device_id != topic_device:
        raise OtaMessageError(f"status: device_id {status.device_id!r} does not match the topic's {topic_device!r}")
    return status


def _check_status(d: Mapping[str, Any]) -> None:
    unknown = sorted(set(d) - set(OtaStatus.__dataclass_fields__))
    if unknown:
        raise OtaMessageError(f"status: unknown field(s) {', '.join(unknown)}")
    if d.get("schema_version") != OTA_SCHEMA_VERSION:
        raise OtaMessageError(f"status.schema_version: {d.get('schema_version')!r} is not {OTA_SCHEMA_VERSION}")
    for key in ("device_id", "rollout_id", "model"):
        if not isinstance(d.get(key), str) or not _ID_RE.match(d[key]):
            raise OtaMessageError(f"status.{key}: {d.get(key)!r} is not a valid id")
    if isinstance(d.get("seq"), bool) or not isinstance(d.get("seq"), int) or d["seq"] < 0:
        raise OtaMessageError("status.seq: expected a non-negative integer")
    if d.get("step") not in STEPS:
        raise OtaMessageError(f"status.step: {d.get('step')!r} is not one of {', '.join(STEPS)}")
    if d.get("result") not in RESULTS:
        raise OtaMessageError(f"status.result: {d.get('result')!r} is not one of {', '.join(RESULTS)}")
    for key in ("version", "active_version", "previous_version"):
        value = d.get(key)
        if value is None and key != "version":
            continue
        try:
            parse_version(value)  # type: ignore[arg-type]
        except ManifestError as exc:
            raise OtaMessageError(f"status.{key}: {exc}") from exc
    if not isinstance(d.get("reason", ""), str) or len(d.get("reason", "")) > 2000:
        raise OtaMessageError("status.reason: expected a string of at most 2000 characters")
    if not isinstance(d.get("health", {}), dict):
        raise OtaMessageError("status.health: expected an object")
    if isinstance(d.get("at"), bool) or not isinstance(d.get("at"), (int, float)):
        raise OtaMessageError("status.at: expected unix seconds")


def _load(payload: bytes | bytearray, what: str) -> dict[str, Any]:
    if len(payload) > MAX_OTA_MESSAGE_BYTES:
        raise OtaMessageError(f"{what}: {len(payload)} bytes, the limit is {MAX_OTA_MESSAGE_BYTES}")
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise OtaMessageError(f"{what}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise OtaMessageError(f"{what}: expected a JSON object")
    return data
