"""The hub's ed25519 release key: created on first start, private file 0600, public half served."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tandem.cloud_hub.errors import ConfigError
from tandem.protocols import signing

log = logging.getLogger(__name__)


@dataclass
class ReleaseKey:
    """Signs manifests; agents trust `public_pem` (GET /v1/keys/release)."""

    private_key: Ed25519PrivateKey
    path: Path

    @property
    def key_id(self) -> str:
        return signing.key_id(self.private_key.public_key())

    @property
    def public_pem(self) -> str:
        return signing.public_key_pem(self.private_key).decode("ascii")

    def sign(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return signing.sign_manifest(manifest, self.private_key)

    @classmethod
    def load_or_create(cls, path: str | Path) -> "ReleaseKey":
        path = Path(path)
        created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        try:
            key = signing.load_or_create_private_key(path)
        except (signing.SignatureError, OSError) as exc:
            raise ConfigError(
                f"release key {path}: {exc}; restore it from backup (agents trust only its public half) "
                "or move it away to create a new one and re-register models"
            ) from exc
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            # A key others can read is not a secret any more; tighten it and say so.
            log.warning("release key path=%s had mode %o; setting 0600", path, mode)
            os.chmod(path, 0o600)
        if created:
            log.info("created release key path=%s key_id=%s", path, signing.key_id(key.public_key()))
        return cls(private_key=key, path=path)
