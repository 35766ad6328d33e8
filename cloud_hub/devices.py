"""Device registry: agents register and heartbeat; status comes from MQTT presence, else last-seen age.

A device whose MQTT status or last will said something is online or offline as it said
(an idle but connected agent stays online; a dead one is offline as soon as the broker
publishes its will, 1.5x its keepalive after it went silent). Devices never heard on MQTT
age out after `offline_after_s`. `device_status` and `newer_presence` are the pure rules;
`DeviceRegistry` is the SQLite shell around them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tandem.cloud_hub.errors import InvalidInputError, NotFoundError
from tandem.cloud_hub.storage.db import HubDatabase

log = logging.getLogger(__name__)

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
MAX_TAGS = 32
MAX_TAG_VALUE = 256
STATUSES = ("online", "offline")


def device_status(last_seen: float, now: float, offline_after_s: float, presence: str | None = None) -> str:
    """What MQTT presence said, if anything; else online when heard from within `offline_after_s`."""
    if presence in STATUSES:
        return presence
    return "online" if now - last_seen <= offline_after_s else "offline"


PresenceKey = tuple[int, int, int]  # (boot, connection, 1 for offline) from the agent's status


def newer_presence(key: PresenceKey | None, stored: PresenceKey | None) -> bool:
    """Does a status with `key` replace the stored one? Ordered by boot, then connection, offline after online
    of the same connection (the will of connection n is older than the online of n+1); never by wall time.
    A status without a key (an older agent, the simulator) always applies."""
    return key is None or stored is None or tuple(key) >= tuple(stored)


def validate_tags(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise InvalidInputError(f"tags: at most {MAX_TAGS} tags per device")
    for key, value in tags.items():
        if not TAG_KEY_RE.match(key):
            raise InvalidInputError(f"tags: key {key!r} may use letters, digits, '.', '_', '/' and '-' (max 64)")
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
            raise InvalidInputError(f"tags.{key}: value must be a string of at most {MAX_TAG_VALUE} characters")
    return dict(tags)


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    profile: str
    agent_version: str
    tags: dict[str, str]
    model_name: str | None
    model_version: str | None
    registered_at: float
    last_seen: float
    status: str = "offline"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "profile": self.profile,
            "agent_version": self.agent_version,
            "tags": self.tags,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "status": self.status,
        }


@dataclass
class DeviceFilter:
    status: str | None = None
    profile: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


_REGISTER_SQL = (
    "INSERT INTO devices (device_id, profile, agent_version, tags, model_name, model_version, last_seen, "
    "registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET profile=excluded.profile, "
    "agent_version=excluded.agent_version, tags=excluded.tags, model_name=excluded.model_name, "
    "model_version=excluded.model_version, last_seen=excluded.last_seen"
)


class DeviceRegistry:
    def __init__(
        self,
        db: HubDatabase,
        offline_after_s: float,
        known_profiles: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        # PostgreSQL: the presence row is locked between its read and its write (SQLite's writer lock does it)
        self._for_update = " FOR UPDATE" if db.dialect.is_postgres else ""
        self.offline_after_s = offline_after_s
        self.known_profiles = set(known_profiles) if known_profiles is not None else None
        self.clock = clock

    def register(
        self,
        device_id: str,
        profile: str,
        agent_version: str,
        tags: dict[str, str] | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> DeviceRecord:
        """Create or update a device (agents re-register on every start); counts as a heartbeat."""
        if not DEVICE_ID_RE.match(device_id or ""):
            raise InvalidInputError(
                f"device_id: {device_id!r} may use letters, digits, '.', '_', ':' and '-' (max 128)"
            )
        if self.known_profiles is not None and profile not in self.known_profiles:
            raise InvalidInputError(
                f"profile: {profile!r} is not a known hardware profile (have: {', '.join(sorted(self.known_profiles))})"
            )
        if not agent_version:
            raise InvalidInputError("agent_version: required")
        tags = validate_tags(tags or {})
        now = self.clock()
        row = {
            "device_id": device_id,
            "profile": profile,
            "agent_version": agent_version,
            "tags": json.dumps(tags, sort_keys=True),
            "model_name": model_name,
            "model_version": model_version,
            "last_seen": now,
        }
        # registered_at is the first registration's: an insert sets it, a re-registration leaves it
        self.db.execute(_REGISTER_SQL, [*row.values(), now])
        log.info("device registered device=%s profile=%s agent=%s", device_id, profile, agent_version)
        return self.get(device_id)

    def heartbeat(
        self,
        device_id: str,
        model_name: str | None = None,
        model_version: str | None = None,
        agent_version: str | None = None,
    ) -> DeviceRecord:
        """Mark a device seen now; optionally update what it runs."""
        updates: dict[str, Any] = {"last_seen": self.clock()}
        if model_name is not None:
            updates["model_name"] = model_name
        if model_version is not None:
            updates["model_version"] = model_version
        if agent_version:
            updates["agent_version"] = agent_version
        sets = ", ".join(f"{k} = ?" for k in updates)
        if not self.db.execute(f"UPDATE devices SET {sets} WHERE device_id = ?", [*updates.values(), device_id]):
            raise NotFoundError(
                f"device {device_id!r} is not registered; devices register from their retained MQTT "
                "status (agent with telemetry on) or via POST /v1/devices"
            )
        return self.get(device_id)

    def set_presence(self, device_id: str, state: str, key: PresenceKey | None = None) -> bool:
        """Record what a device's MQTT status said, unless a newer status already did; True when applied."""
        if state not in STATUSES:
            raise InvalidInputError(f"presence: {state!r} is not one of {', '.join(STATUSES)}")
        with self.db.transaction() as tx:
            rows = tx.query("SELECT presence_key FROM devices WHERE device_id=?" + self._for_update, [device_id])
            if not rows:
                return False
            text = rows[0]["presence_key"]
            stored = tuple(json.loads(text)) if text else None
            if not newer_presence(key, stored):
                return False
            tx.execute(
                "UPDATE devices SET presence=?, presence_key=? WHERE device_id=?",
                [state, json.dumps(list(key)) if key is not None else None, device_id],
            )
        return True

    def exists(self, device_id: str) -> bool:
        return bool(self.db.query("SELECT 1 AS x FROM devices WHERE device_id=?", [device_id]))

    def touch(self, device_ids: Iterable[str]) -> int:
        """Mark many registered devices seen now in one statement; unknown ids are skipped. Returns rows updated."""
        ids = sorted(set(device_ids))
        if not ids:
            return 0
        now = self.clock()
        updated = 0
        with self.db.transaction() as tx:
            for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                updated += tx.execute(f"UPDATE devices SET last_seen = ? WHERE device_id IN ({marks})", [now, *chunk])
        return updated

    def get(self, device_id: str) -> DeviceRecord:
        rows = self.db.query("SELECT * FROM devices WHERE device_id=?", [device_id])
        if not rows:
            raise NotFoundError(f"device {device_id!r} is not registered")
        return self._record(rows[0], self.clock())

    def delete(self, device_id: str) -> None:
        if self.db.execute("DELETE FROM devices WHERE device_id=?", [device_id]) == 0:
            raise NotFoundError(f"device {device_id!r} is not registered")

    def list(
        self, filt: DeviceFilter | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[DeviceRecord], int]:
        filt = filt or DeviceFilter()
        now = self.clock()
        clauses: list[str] = []
        params: list[Any] = []
        for column in ("profile", "model_name", "model_version"):
            value = getattr(filt, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        for key, value in filt.tags.items():
            clauses.append(f"{self.db.dialect.json_text('tags')} = ?")
            params.extend([key, value])
        if filt.status is not None:
            if filt.status not in STATUSES:
                raise InvalidInputError(f"status: {filt.status!r} is not one of {', '.join(STATUSES)}")
            op = ">=" if filt.status == "online" else "<"
            clauses.append(f"(presence = ? OR (presence IS NULL AND last_seen {op} ?))")
            params.extend([filt.status, now - self.offline_after_s])
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        total = self.db.query(f"SELECT COUNT(*) AS n FROM devices {where}", params)[0]["n"]
        rows = self.db.query(
            f"SELECT * FROM devices {where} ORDER BY device_id LIMIT ? OFFSET ?", params + [limit, offset]
        )
        return [self._record(r, now) for r in rows], total

    def counts(self) -> dict[str, int]:
        now = self.clock()
        rows = self.db.query("SELECT last_seen, presence FROM devices")
        online = sum(
            1 for r in rows if device_status(r["last_seen"], now, self.offline_after_s, r["presence"]) == "online"
        )
        return {"total": len(rows), "online": online, "offline": len(rows) - online}

    def _record(self, row: dict[str, Any], now: float) -> DeviceRecord:
        return DeviceRecord(
            device_id=row["device_id"],
            profile=row["profile"],
            agent_version=row["agent_version"],
            tags=json.loads(row["tags"]),
            model_name=row["model_name"],
            model_version=row["model_version"],
            registered_at=row["registered_at"],
            last_seen=row["last_seen"],
            status=device_status(row["last_seen"], now, self.offline_after_s, row.get("presence")),
        )
