"""Trusted publisher keys: the ed25519 public keys whose compiler signatures the hub accepts.

One PEM file per key under `<data_dir>/publishers/<key_id>.pem` (folder 0700, files 0600),
managed with `tandem-hub publishers add|list|remove`; read afresh on every registration,
so adding or removing a key needs no restart.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tandem.cloud_hub.errors import InvalidInputError, NotFoundError
from tandem.protocols import signing

log = logging.getLogger(__name__)

_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Publisher:
    key_id: str
    name: str
    public_pem: str


class TrustedPublishers:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    def add(self, pem: bytes | str, name: str = "") -> Publisher:
        """Trust a public key (PEM); adding the same key again keeps one entry (the newer name)."""
        try:
            key = signing.load_public_key(pem if isinstance(pem, bytes) else pem.encode())
        except signing.SignatureError as exc:
            raise InvalidInputError(f"publisher key: {exc}") from exc
        if name and not re.fullmatch(r"[\w .@-]{1,64}", name):
            raise InvalidInputError(
                f"publisher name {name!r}: letters, digits, space, '.', '@', '_' and '-', at most 64"
            )
        kid = signing.key_id(key)
        self._ensure_folder()
        text = signing.public_key_pem(key).decode("ascii")
        path = self.folder / f"{kid}.pem"
        # a temporary file of this call's own (mkstemp: 0600, unique), so two uploads trusting the
        # same key at once (trust on first use) cannot rename each other's file away
        fd, tmp_name = tempfile.mkstemp(prefix=f".{kid}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"# name: {name}\n" + text if name else text)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        log.info("trusted publisher added key_id=%s name=%s", kid, name or "-")
        return Publisher(kid, name, text)

    def remove(self, key_id: str) -> None:
        if not _KEY_ID.match(key_id):
            raise InvalidInputError(f"{key_id!r} is not a key id (16 hex characters, see `tandem-hub publishers list`)")
        path = self.folder / f"{key_id}.pem"
        if not path.is_file():
            raise NotFoundError(f"publisher key {key_id} is not trusted here")
        path.unlink()
        log.warning("trusted publisher removed key_id=%s", key_id)

    def list(self) -> list[Publisher]:
        out = []
        for path in sorted(self.folder.glob("*.pem")) if self.folder.is_dir() else []:
            text = path.read_text(encoding="ascii", errors="replace")
            name = ""
            if text.startswith("# name: "):
                first, _, text = text.partition("\n")
                name = first.removeprefix("# name: ")
            try:
                key = signing.load_public_key(text)
            except signing.SignatureError as exc:
                log.error("trusted publisher file is unreadable path=%s reason=%s; ignored", path, exc)
                continue
            out.append(Publisher(signing.key_id(key), name, text))
        return out

    def keys(self) -> builtins.list[Ed25519PublicKey]:  # `list` here is the method above
        return [signing.load_public_key(p.public_pem) for p in self.list()]
