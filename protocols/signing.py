"""ed25519 signatures over a manifest's canonical JSON.

The signed bytes are the manifest without its `signature` field, serialised with
sorted keys and no whitespace, so any re-formatting of the file keeps it valid and
any change of content breaks it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "ed25519"


class SignatureError(ValueError):
    """A signature is missing, malformed or does not match the trusted key."""


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: everything but `signature`, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex chars of its sha256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy of `manifest` with a `signature` field made by `private_key`."""
    signature = private_key.sign(canonical_bytes(manifest))
    signed = dict(manifest)
    signed["signature"] = {
        "alg": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "value": base64.b64encode(signature).decode("ascii"),
    }
    return signed


def verify_manifest(manifest: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless `manifest` carries a valid signature by `public_key`."""
    sig = manifest.get("signature")
    if not isinstance(sig, Mapping):
        raise SignatureError("manifest is not signed")
    if sig.get("alg") != ALGORITHM:
        raise SignatureError(f"signature.alg: {sig.get('alg')!r} is not {ALGORITHM}")
    try:
        value = base64.b64decode(str(sig.get("value", "")), validate=True)
    except ValueError as exc:
        raise SignatureError("signature.value: not valid base64") from exc
    try:
        public_key.verify(value, canonical_bytes(manifest))
    except InvalidSignature as exc:
        raise SignatureError(
            f"signature does not match the trusted key {key_id(public_key)} (signed by {sig.get('key_id')!r}); "
            "the manifest was altered or signed by another key"
        ) from exc


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: str | Path) -> None:
    """Write a PEM private key readable by its owner only (mode 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: cannot read an ed25519 private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: is not an ed25519 private key")
    return key


def load_or_create_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load the key at `path`, creating it (0600) on first use."""
    path = Path(path)
    if path.exists():
        return load_private_key(path)
    key = generate_private_key()
    save_private_key(key, path)
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes | str | Path) -> Ed25519PublicKey:
    """Load a trusted public key from PEM bytes or a PEM file path."""
    data = Path(pem).read_bytes() if isinstance(pem, Path) else (pem.encode() if isinstance(pem, str) else pem)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError(f"cannot read an ed25519 public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the trusted key is not an ed25519 public key")
    return key
