"""Checks a downloaded update before anything of it runs: signature, binding to the command,
target profile, expiry, anti-rollback version, and every file's size and sha256.

Pure apart from reading files; each failure is a VerificationError that names what failed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tandem.edge_agent.ota.errors import VerificationError
from tandem.protocols.manifest import FileEntry, Manifest, ManifestError, Variant, parse_version
from tandem.protocols.ota import OtaCommand
from tandem.protocols.signing import SignatureError, canonical_bytes, verify_manifest

_CHUNK = 1 << 20


def manifest_digest(doc: Mapping[str, Any]) -> str:
    """What an OTA command's manifest_sha256 names: sha256 of the canonical bytes (no signature)."""
    return hashlib.sha256(canonical_bytes(doc)).hexdigest()


def verify_manifest_doc(
    doc: Mapping[str, Any],
    *,
    trusted_key: Ed25519PublicKey,
    cmd: OtaCommand,
    profile: str,
    max_accepted: str | None,
    now: float,
    tolerance_s: float = 0.0,
) -> tuple[Manifest, Variant]:
    """Accept the manifest for this device, or raise VerificationError naming the first failed check.

    `now` is the hub's time as the device estimates it (edge_agent.ota.hubclock), so a device
    clock an hour off neither refuses a fresh release nor installs an expired one.
    """
    try:
        verify_manifest(doc, trusted_key)
    except SignatureError as exc:
        raise VerificationError(f"manifest {cmd.model} {cmd.version}: {exc}") from exc
    if manifest_digest(doc) != cmd.manifest_sha256:
        raise VerificationError(
            f"manifest {cmd.model} {cmd.version}: sha256 does not match the command's manifest_sha256"
        )
    try:
        manifest = Manifest.from_dict(doc)
    except ManifestError as exc:
        raise VerificationError(f"manifest: {exc}") from exc
    if (manifest.name, manifest.version) != (cmd.model, cmd.version):
        raise VerificationError(
            f"manifest is {manifest.name} {manifest.version}, the command asked for {cmd.model} {cmd.version}"
        )
    check_expiry(manifest, now, tolerance_s)
    if profile not in manifest.target_profiles:
        raise VerificationError(
            f"manifest {manifest.name} {manifest.version}: targets {', '.join(manifest.target_profiles) or 'no profile'}, "
            f"not this device's profile {profile!r}"
        )
    try:
        variant = manifest.variant_for_profile(profile)
    except ManifestError as exc:
        raise VerificationError(f"manifest {manifest.name} {manifest.version}: {exc}") from exc
    if max_accepted is not None and parse_version(manifest.version) <= parse_version(max_accepted):
        raise VerificationError(
            f"manifest {manifest.name} {manifest.version}: not higher than the highest accepted "
            f"version {max_accepted} (anti-rollback; a downgrade must be released as a higher version)"
        )
    if manifest.golden is None:
        raise VerificationError(
            f"manifest {manifest.name} {manifest.version}: has no golden set, so it cannot be self-tested"
        )
    return manifest, variant


def check_expiry(manifest: Manifest, hub_now: float, tolerance_s: float = 0.0) -> None:
    """Raise VerificationError when `manifest.expires_at` passed more than `tolerance_s` before `hub_now`."""
    if manifest.expires_at is None:
        return
    try:
        expires = dt.datetime.fromisoformat(manifest.expires_at)
    except ValueError as exc:
        raise VerificationError(f"manifest.expires_at: {manifest.expires_at!r} is not an ISO time") from exc
    if expires.tzinfo is None:
        raise VerificationError(f"manifest.expires_at: {manifest.expires_at!r} has no time zone (use +00:00)")
    late = hub_now - expires.timestamp()
    if late > tolerance_s:
        raise VerificationError(
            f"manifest {manifest.name} {manifest.version}: expired at {manifest.expires_at} "
            f"({late:.0f}s ago on the hub's clock, tolerance {tolerance_s:g}s)"
        )


def files_for(manifest: Manifest, variant: Variant) -> list[FileEntry]:
    """What a device downloads: its variant's files and the golden set, once per path."""
    entries: dict[str, FileEntry] = {f.path: f for f in variant.files}
    if manifest.golden is not None:
        entries.setdefault(manifest.golden.file.path, manifest.golden.file)
    return list(entries.values())


def verify_files(root: Path, entries: list[FileEntry]) -> None:
    """Every file present with the manifest's size and sha256."""
    for entry in entries:
        path = root / entry.path
        if not path.is_file() or path.is_symlink():
            raise VerificationError(f"{entry.path}: missing")
        size = path.stat().st_size
        if size != entry.size:
            raise VerificationError(f"{entry.path}: size {size} bytes, the manifest says {entry.size}")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            raise VerificationError(f"{entry.path}: sha256 mismatch")
