"""Bearer tokens with scopes read < operate < admin, plus per-device tokens; stored as sha256 of the secret.

A token reads `tdm_<id>_<secret>`: the id finds the row (and names the token in lists
and revocations), the hash of the whole token is compared in constant time.

A `device` token belongs to one device (least privilege for the credential every agent
config carries): it reaches only the routes a device needs (signed manifests, artifacts,
the release key, its own record), never fleet data such as the device list, telemetry,
rollouts or other devices' hard examples. Revoking the device's certificate revokes it too
(cloud_hub/revocation.py).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from tandem.cloud_hub.errors import AuthError, ForbiddenError, InvalidInputError, NotFoundError
from tandem.cloud_hub.storage.db import HubDatabase, insert
from tandem.protocols.topics import TopicError, check_device_id

log = logging.getLogger(__name__)

SCOPES = ("read", "operate", "admin")
DEVICE_SCOPE = "device"  # outside the order: a device token allows only `device`, which every scope allows
TOKEN_RE = re.compile(r"^tdm_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")


def scope_allows(granted: str, required: str) -> bool:
    """Scopes are ordered: admin can do what operate can, operate what read can. What a device
    may do (`device`) any token may; a device token may do nothing else."""
    if required == DEVICE_SCOPE:
        return granted == DEVICE_SCOPE or granted in SCOPES
    if granted == DEVICE_SCOPE:
        return False
    return SCOPES.index(granted) >= SCOPES.index(required)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    name: str
    scope: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    device_id: str | None = None  # set exactly for `device` tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "name": self.name,
            "scope": self.scope,
            "device_id": self.device_id,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "revoked": self.revoked_at is not None,
        }


@dataclass(frozen=True)
class NewToken:
    """A freshly created token; `token` is shown once and never stored."""

    info: TokenInfo
    token: str


class TokenStore:
    def __init__(self, db: HubDatabase, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def create(self, name: str, scope: str, device_id: str | None = None) -> NewToken:
        """A new token; `device` scope needs the `device_id` it belongs to, other scopes take none."""
        if scope not in SCOPES and scope != DEVICE_SCOPE:
            raise InvalidInputError(f"scope: {scope!r} is not one of {', '.join((DEVICE_SCOPE, *SCOPES))}")
        if not NAME_RE.match(name or ""):
            raise InvalidInputError(f"name: {name!r} may use letters, digits, space, '.', '_' and '-' (max 64)")
        if scope == DEVICE_SCOPE:
            try:
                check_device_id(device_id or "")
            except TopicError as exc:
                raise InvalidInputError(f"device_id: {exc}") from None
        elif device_id is not None:
            raise InvalidInputError(f"device_id: only a {DEVICE_SCOPE!r} token belongs to a device, not {scope!r}")
        token_id = secrets.token_hex(6)
        token = f"tdm_{token_id}_{secrets.token_urlsafe(32)}"
        now = self.clock()
        with self.db.transaction() as tx:
            insert(
                tx,
                "tokens",
                {
                    "token_id": token_id,
                    "name": name,
                    "scope": scope,
                    "secret_sha256": hash_token(token),
                    "created_at": now,
                    "revoked_at": None,
                    "last_used_at": None,
                    "device_id": device_id,
                },
            )
        log.info("token created id=%s name=%s scope=%s device=%s", token_id, name, scope, device_id)
        return NewToken(TokenInfo(token_id, name, scope, now, None, None, device_id), token)

    def list(self, include_revoked: bool = True) -> list[TokenInfo]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        rows = self.db.query(f"SELECT * FROM tokens {where} ORDER BY created_at, token_id")
        return [_info(r) for r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        with self.db.transaction() as tx:
            rows = tx.query("SELECT revoked_at FROM tokens WHERE token_id=?", [token_id])
            if not rows:
                raise NotFoundError(f"token {token_id!r} does not exist (see `tandem-hub tokens list`)")
            if rows[0]["revoked_at"] is None:
                tx.execute("UPDATE tokens SET revoked_at=? WHERE token_id=?", [self.clock(), token_id])
        log.info("token revoked id=%s", token_id)
        return self.get(token_id)

    def revoke_device(self, device_id: str, issued_before: float | None = None) -> builtins.list[str]:
        """Revoke the live `device` tokens of `device_id` (created before `issued_before`, when given:
        a certificate revoked at T ends the tokens given out with it, not a replacement's); their ids."""
        with self.db.transaction() as tx:
            rows = tx.query(
                "SELECT token_id FROM tokens WHERE scope=? AND device_id=? AND revoked_at IS NULL AND created_at<?",
                [DEVICE_SCOPE, device_id, float("inf") if issued_before is None else issued_before],
            )
            ids = [r["token_id"] for r in rows]
            for token_id in ids:
                tx.execute("UPDATE tokens SET revoked_at=? WHERE token_id=?", [self.clock(), token_id])
        if ids:
            log.warning("device tokens revoked device=%s tokens=%s", device_id, ",".join(ids))
        return ids

    def get(self, token_id: str) -> TokenInfo:
        rows = self.db.query("SELECT * FROM tokens WHERE token_id=?", [token_id])
        if not rows:
            raise NotFoundError(f"token {token_id!r} does not exist")
        return _info(rows[0])

    def authenticate(self, token: str | None) -> TokenInfo:
        """The token's info, or AuthError (401) when missing, unknown or revoked."""
        if not token:
            raise AuthError(
                "missing bearer token: send 'Authorization: Bearer <token>' (create one with `tandem-hub tokens create`)"
            )
        match = TOKEN_RE.match(token)
        rows = self.db.query("SELECT * FROM tokens WHERE token_id=?", [match.group(1)]) if match else []
        # Compare even when no row matched, so timing says nothing about which ids exist.
        stored = rows[0]["secret_sha256"] if rows else "0" * 64
        if not hmac.compare_digest(stored, hash_token(token)) or not rows:
            raise AuthError("invalid bearer token")
        row = rows[0]
        if row["revoked_at"] is not None:
            raise AuthError(f"token {row['token_id']} ({row['name']}) was revoked")
        now = self.clock()
        if row["last_used_at"] is None or now - row["last_used_at"] > 60:
            self.db.execute(  # coarse, so reads do not each cost a write
                "UPDATE tokens SET last_used_at=? WHERE token_id=?", [now, row["token_id"]]
            )
        return _info(row)

    def authorize(self, token: str | None, required: str) -> TokenInfo:
        """authenticate, then ForbiddenError (403) unless the scope allows `required`."""
        info = self.authenticate(token)
        if not scope_allows(info.scope, required):
            raise ForbiddenError(f"token {info.token_id} has scope {info.scope!r}; this needs {required!r} or higher")
        return info


def _info(row: dict[str, Any]) -> TokenInfo:
    return TokenInfo(
        row["token_id"],
        row["name"],
        row["scope"],
        row["created_at"],
        row["revoked_at"],
        row["last_used_at"],
        row.get("device_id"),
    )
