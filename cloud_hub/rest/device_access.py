"""What a `device` token may download: the manifests and files of versions rolled out to its own device.

Models are the fleet's, but a device's credential should reach only what it was sent: a stolen token
then learns nothing about the rest of the catalogue. Other tokens (read and up) are not restricted here.
"""

from __future__ import annotations

from typing import Any, Iterable

from tandem.cloud_hub.auth import TokenInfo
from tandem.cloud_hub.errors import ForbiddenError


def check_device_may_fetch(hub: Any, token: TokenInfo, versions: Iterable[tuple[str, str]], what: str) -> None:
    """ForbiddenError (403) unless `token` is not a device's, or a rollout sent one of `versions` to its device."""
    if token.device_id is None:
        return
    store = getattr(getattr(hub, "rollouts", None), "store", None)
    if store is not None and any(store.targets(token.device_id, m, v) for m, v in versions):
        return
    raise ForbiddenError(
        f"token {token.token_id} belongs to device {token.device_id!r}, and no rollout sends it {what}"
    )


def versions_holding(hub: Any, sha256: str) -> list[tuple[str, str]]:
    """The (model, version) pairs whose manifests list a file with this sha256."""
    rows = hub.db.query("SELECT DISTINCT model, version FROM model_files WHERE sha256=?", [sha256])
    return [(r["model"], r["version"]) for r in rows]
