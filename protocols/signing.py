"""ed25519 signatures over a manifest's canonical JSON, and the two-signature chain.

The signed bytes are the manifest without its `signature` field, serialised with
sorted keys and no whitespace, so any re-formatting of the file keeps it valid and
any change of content breaks it.

Two roles sign (docs/security.md): `tandem-compile` signs with a publisher key; the hub
verifies that signature against its trusted publishers, moves it to `publisher_signature`
and counter-signs everything (the publisher's signature included) with its release key
in `signature`. A manifest straight from the compiler carries only `signature`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tandem.protocols.errors import ContractError

__all__ = [
    "ALGORITHM",
    "PUBLISHER_FIELD",
    "SignatureError",
    "UnsignedError",
    "UntrustedKeyError",
    "canonical_bytes",
    "countersign",
    "embedded_public_key",
    "generate_private_key",
    "key_id",
    "load_or_create_private_key",
    "load_private_key",
    "load_public_key",
    "public_key_pem",
    "publisher_bytes",
    "save_private_key",
    "sign_manifest",
    "signer_key_id",
    "verify_by_any",
    "verify_manifest",
]

ALGORITHM = "ed25519"
PUBLISHER_FIELD = "publisher_signature"


class SignatureError(ContractError):
    """A signature is missing, malformed or does not match the trusted key.

    SignatureError
     +-- UnsignedError       no signature at all
     +-- UntrustedKeyError   a signature by no trusted key (unknown signer, or altered content)
    """


class UnsignedError(SignatureError):
    """The manifest carries no signature."""


class UntrustedKeyError(SignatureError):
    """No trusted key verifies the signature; `key_id` is the signer it claims."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: everything but `signature`, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def publisher_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes the publisher signed: everything but both signatures, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k not in ("signature", PUBLISHER_FIELD)}
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
        # A hint for trust-on-first-use only: a verifier trusts keys it was given, never this one.
        "public_key": base64.b64encode(
            private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode("ascii"),
    }
    return signed


def embedded_public_key(manifest: Mapping[str, Any], field: str = "signature") -> Ed25519PublicKey | None:
    """The public key a signature carries along (for an explicit trust-on-first-use), or None."""
    sig = manifest.get(field)
    raw = sig.get("public_key") if isinstance(sig, Mapping) else None
    if not isinstance(raw, str):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(raw, validate=True))
    except ValueError:
        return None


def verify_manifest(manifest: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless `manifest` carries a valid signature by `public_key`."""
    _verify(manifest, "signature", _signed_bytes(manifest, "signature"), public_key)


def _signature_value(manifest: Mapping[str, Any], field: str) -> bytes:
    sig = manifest.get(field)
    if not isinstance(sig, Mapping):
        raise UnsignedError("manifest is not signed" if field == "signature" else f"manifest has no {field}")
    if sig.get("alg") != ALGORITHM:
        raise SignatureError(f"{field}.alg: {sig.get('alg')!r} is not {ALGORITHM}")
    try:
        return base64.b64decode(str(sig.get("value", "")), validate=True)
    except ValueError as exc:
        raise SignatureError(f"{field}.value: not valid base64") from exc


def _signed_bytes(manifest: Mapping[str, Any], field: str) -> bytes:
    """The bytes `field` signs; text that cannot be UTF-8 (a lone surrogate) was never signed."""
    _signature_value(manifest, field)  # unsigned or malformed: say so before looking at the content
    try:
        return canonical_bytes(manifest) if field == "signature" else publisher_bytes(manifest)
    except (UnicodeEncodeError, ValueError, RecursionError) as exc:
        raise SignatureError(f"the manifest holds content that cannot be signed ({type(exc).__name__})") from exc


def _verify(manifest: Mapping[str, Any], field: str, signed: bytes, public_key: Ed25519PublicKey) -> None:
    value = _signature_value(manifest, field)
    try:
        public_key.verify(value, signed)
    except InvalidSignature as exc:
        claimed = manifest[field].get("key_id")
        raise SignatureError(
            f"{field} does not match the trusted key {key_id(public_key)} (signed by {claimed!r}); "
            "the manifest was altered or signed by another key"
        ) from exc


def signer_key_id(manifest: Mapping[str, Any], field: str = "signature") -> str | None:
    """The key id a signature claims (unverified: only for picking the key and for messages)."""
    sig = manifest.get(field)
    return str(sig.get("key_id")) if isinstance(sig, Mapping) and sig.get("key_id") is not None else None


def verify_by_any(manifest: Mapping[str, Any], keys: Sequence[Ed25519PublicKey], *, field: str = "signature") -> str:
    """The key id of the trusted key that made `field`; UnsignedError, UntrustedKeyError or SignatureError.

    `field` "signature" checks the outer signature (canonical bytes); PUBLISHER_FIELD checks a
    counter-signed manifest's publisher signature over the bytes the publisher signed.
    """
    signed = _signed_bytes(manifest, field)  # unsigned or malformed before any key is tried
    claimed = signer_key_id(manifest, field)
    by_id = {key_id(k): k for k in keys}
    if claimed in by_id:
        _verify(manifest, field, signed, by_id[claimed])
        return str(claimed)
    for key in keys:  # a key id is a hint, not a proof: a relabelled signature still verifies by its key
        try:
            _verify(manifest, field, signed, key)
        except SignatureError:
            continue
        return key_id(key)
    trusted = ", ".join(sorted(by_id)) or "none configured"
    raise UntrustedKeyError(
        f"{field} is by key {claimed!r}, which is not trusted (trusted: {trusted}); "
        "the manifest was altered or signed by an unknown key",
        key_id=claimed,
    )


def countersign(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The hub's step: keep the publisher's `signature` as `publisher_signature`, sign the whole with `private_key`."""
    body = dict(manifest)
    publisher = body.pop("signature", None)
    if publisher is not None:
        body[PUBLISHER_FIELD] = publisher
    return sign_manifest(body, private_key)


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
