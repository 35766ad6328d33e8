"""Model registry: register compiler output directories as immutable, hub-signed versions.

Nothing is counter-signed unverified: the manifest's publisher signature must verify
against a trusted publisher key (cloud_hub/publishers.py) and every file must match its
sha256/size; only then are the files stored content-addressed and the manifest
counter-signed with the hub's release key (the publisher's signature kept inside).
Re-registering identical content is a no-op; different content under an existing
name+version is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.cloud_hub.errors import ConflictError, InvalidInputError, NotFoundError
from tandem.cloud_hub.keys import ReleaseKey
from tandem.cloud_hub.publishers import TrustedPublishers
from tandem.cloud_hub.storage.artifacts import ArtifactStore, sha256_file
from tandem.cloud_hub.storage.db import HubDatabase, insert, insert_many
from tandem.protocols import signing
from tandem.protocols.manifest import (
    MANIFEST_FILENAME,
    FileEntry,
    Manifest,
    ManifestError,
    load_manifest,
    parse_version,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult:
    name: str
    version: str
    created: bool
    content_sha256: str


def content_digest(manifest: Manifest) -> str:
    """sha256 of the manifest's canonical form without signature: what 'same version' means."""
    return hashlib.sha256(signing.canonical_bytes(manifest.to_dict())).hexdigest()


def version_key(version: str) -> str:
    """A string that sorts like the semantic version (for ORDER BY)."""
    return ".".join(f"{part:06d}" for part in parse_version(version))


def manifest_files(manifest: Manifest) -> list[FileEntry]:
    """Every file the manifest names (variants and golden set), once per path."""
    seen: dict[str, FileEntry] = {}
    entries = [f for v in manifest.variants for f in v.files]
    if manifest.golden is not None:
        entries.append(manifest.golden.file)
    for entry in entries:
        other = seen.get(entry.path)
        if other is not None and other.sha256 != entry.sha256:
            raise InvalidInputError(f"manifest lists {entry.path} twice with different sha256")
        seen[entry.path] = entry
    return list(seen.values())


class ModelRegistry:
    def __init__(
        self,
        db: HubDatabase,
        artifacts: ArtifactStore,
        key: ReleaseKey,
        publishers: TrustedPublishers | None = None,
        *,
        trust_on_first_use: bool = False,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.key = key
        self.publishers = publishers
        # Dev only: trust the key an upload carries when it is unknown (logged at WARNING every time).
        self.trust_on_first_use = trust_on_first_use

    def register_dir(self, model_dir: str | Path) -> RegisterResult:
        """Verify (publisher signature, then every file), store and counter-sign the compiled model in `model_dir`."""
        model_dir = Path(model_dir)
        try:
            manifest = load_manifest(model_dir)
            doc = json.loads((model_dir / MANIFEST_FILENAME).read_bytes())
        except (ManifestError, OSError, ValueError) as exc:
            raise InvalidInputError(f"{model_dir}: {exc}") from exc
        publisher = self._verify_publisher(doc, manifest)
        files = manifest_files(manifest)
        for entry in files:
            _check_file(model_dir, entry)
        digest = content_digest(manifest)
        existing = self._existing_digest(manifest.name, manifest.version)
        if existing is not None:
            return self._same_or_conflict(manifest, digest, existing)
        for entry in files:
            self.artifacts.put_file(model_dir / entry.path, expected_sha256=entry.sha256)
        signed = signing.countersign(manifest.to_dict(), self.key.private_key)
        with self.db.transaction() as tx:
            # Two registrations may race (threads, or hub replicas on PostgreSQL): the loser's insert does
            # nothing and it answers as a re-registration would.
            added = insert(
                tx,
                "models",
                {
                    "name": manifest.name,
                    "version": manifest.version,
                    "version_key": version_key(manifest.version),
                    "content_sha256": digest,
                    "manifest": json.dumps(signed, sort_keys=True),
                    "created_at": manifest.created_at,
                    "registered_at": time.time(),
                    "size_bytes": sum(f.size for f in files),
                },
                "ON CONFLICT DO NOTHING",
            )
            if not added:
                row = tx.query(
                    "SELECT content_sha256 FROM models WHERE name=? AND version=?", [manifest.name, manifest.version]
                )
                return self._same_or_conflict(manifest, digest, row[0]["content_sha256"])
            insert_many(
                tx,
                "variants",
                [
                    {
                        "model": manifest.name,
                        "version": manifest.version,
                        "variant_id": v.id,
                        "runtime": v.runtime,
                        "precision": v.precision,
                        "profiles": json.dumps(_variant_profiles(manifest, v.id)),
                        "size_bytes": sum(f.size for f in v.files),
                    }
                    for v in manifest.variants
                ],
            )
            insert_many(
                tx,
                "model_files",
                [
                    {
                        "model": manifest.name,
                        "version": manifest.version,
                        "path": f.path,
                        "sha256": f.sha256,
                        "size": f.size,
                    }
                    for f in files
                ],
            )
        log.info(
            "registered model=%s version=%s variants=%d publisher=%s",
            manifest.name,
            manifest.version,
            len(manifest.variants),
            publisher,
        )
        return RegisterResult(manifest.name, manifest.version, True, digest)

    def _verify_publisher(self, doc: dict[str, Any], manifest: Manifest) -> str:
        """The trusted publisher key id that signed `doc`, or InvalidInputError (422) naming why not."""
        what = f"model {manifest.name} {manifest.version}"
        if doc.get(signing.PUBLISHER_FIELD) is not None:
            raise InvalidInputError(
                f"{what}: the manifest is already counter-signed by a hub; upload the compiler's "
                "output (tandem-compile), not a manifest downloaded from a hub"
            )
        keys = self.publishers.keys() if self.publishers is not None else []
        try:
            return signing.verify_by_any(doc, keys)
        except signing.UnsignedError as exc:
            raise InvalidInputError(
                f"{what}: unsigned: the manifest carries no publisher signature; sign it with "
                "tandem-compile --publisher-key"
            ) from exc
        except signing.UntrustedKeyError as exc:
            embedded = signing.embedded_public_key(doc)
            if not self.trust_on_first_use or embedded is None:
                raise InvalidInputError(
                    f"{what}: untrusted publisher: signed by key {exc.key_id!r}, which this hub does not trust; "
                    "trust it with `tandem-hub publishers add KEY.pub.pem` if you know who holds it"
                ) from exc
            try:
                signing.verify_by_any(doc, [embedded])
            except signing.SignatureError as inner:
                raise InvalidInputError(f"{what}: tampered: {inner}") from inner
            added = (
                self.publishers.add(signing.public_key_pem(embedded), "trust-on-first-use")
                if self.publishers is not None
                else None
            )
            log.warning(
                "TRUST ON FIRST USE: trusting unknown publisher key_id=%s for model=%s version=%s; "
                "dev flag publishers.trust_on_first_use is on, never use it for a real fleet",
                added.key_id if added else signing.key_id(embedded),
                manifest.name,
                manifest.version,
            )
            return signing.key_id(embedded)
        except signing.SignatureError as exc:
            raise InvalidInputError(f"{what}: tampered: {exc}") from exc

    def _existing_digest(self, name: str, version: str) -> str | None:
        rows = self.db.query("SELECT content_sha256 FROM models WHERE name=? AND version=?", [name, version])
        return rows[0]["content_sha256"] if rows else None

    @staticmethod
    def _same_or_conflict(manifest: Manifest, digest: str, existing: str) -> RegisterResult:
        if existing != digest:
            raise ConflictError(
                f"model {manifest.name} version {manifest.version} is already registered with different content; "
                "versions are immutable: bump the version (e.g. tandem-compile --version) and register again"
            )
        return RegisterResult(manifest.name, manifest.version, False, digest)

    def list_models(
        self, name: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """One row per model name with its versions count and latest version."""
        where, params = ("WHERE name = ?", [name]) if name else ("", [])
        total = self.db.query(f"SELECT COUNT(DISTINCT name) AS n FROM models {where}", params)[0]["n"]
        rows = self.db.query(
            f"""SELECT name, COUNT(*) AS versions, MAX(version_key) AS latest_key, MAX(registered_at) AS updated_at
                FROM models {where} GROUP BY name ORDER BY name LIMIT ? OFFSET ?""",
            params + [limit, offset],
        )
        items = []
        for row in rows:
            latest = self.db.query(
                "SELECT version FROM models WHERE name=? AND version_key=?", [row["name"], row["latest_key"]]
            )
            items.append(
                {
                    "name": row["name"],
                    "versions": row["versions"],
                    "latest_version": latest[0]["version"],
                    "updated_at": row["updated_at"],
                }
            )
        return items, total

    def list_versions(self, name: str, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Versions of one model, newest first."""
        total = self.db.query("SELECT COUNT(*) AS n FROM models WHERE name=?", [name])[0]["n"]
        if total == 0:
            raise NotFoundError(f"model {name!r} is not registered")
        rows = self.db.query(
            """SELECT name, version, content_sha256, created_at, registered_at, size_bytes FROM models
               WHERE name=? ORDER BY version_key DESC LIMIT ? OFFSET ?""",
            [name, limit, offset],
        )
        return rows, total

    def get_version(self, name: str, version: str) -> dict[str, Any]:
        rows = self.db.query(
            """SELECT name, version, content_sha256, created_at, registered_at, size_bytes FROM models
               WHERE name=? AND version=?""",
            [name, version],
        )
        if not rows:
            raise NotFoundError(f"model {name!r} version {version!r} is not registered")
        row = rows[0]
        row["files"] = self.db.query(
            "SELECT path, sha256, size FROM model_files WHERE model=? AND version=? ORDER BY path", [name, version]
        )
        return row

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        """The signed manifest exactly as stored."""
        rows = self.db.query("SELECT manifest FROM models WHERE name=? AND version=?", [name, version])
        if not rows:
            raise NotFoundError(f"model {name!r} version {version!r} is not registered")
        return json.loads(rows[0]["manifest"])

    def list_variants(
        self,
        model: str | None = None,
        version: str | None = None,
        profile: str | None = None,
        runtime: str | None = None,
        precision: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        clauses, params = [], []
        for column, value in (("model", model), ("version", version), ("runtime", runtime), ("precision", precision)):
            if value is not None:
                clauses.append(f"v.{column} = ?")
                params.append(value)
        if profile is not None:
            clauses.append(self.db.dialect.json_array_has("v.profiles"))
            params.append(profile)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        total = self.db.query(f"SELECT COUNT(*) AS n FROM variants v {where}", params)[0]["n"]
        rows = self.db.query(
            f"""SELECT v.model, v.version, v.variant_id, v.runtime, v.precision, v.profiles, v.size_bytes
                FROM variants v JOIN models m ON m.name = v.model AND m.version = v.version {where}
                ORDER BY v.model, m.version_key DESC, v.variant_id LIMIT ? OFFSET ?""",
            params + [limit, offset],
        )
        for row in rows:
            row["profiles"] = json.loads(row["profiles"])
        return rows, total

    def has_artifact_reference(self, sha256: str) -> bool:
        return bool(self.db.query("SELECT 1 FROM model_files WHERE sha256=? LIMIT 1", [sha256]))


def _variant_profiles(manifest: Manifest, variant_id: str) -> list[str]:
    """Profiles that chose this variant, plus those the variant itself declares."""
    chosen = [p for p, c in manifest.profiles.items() if c.chosen == variant_id]
    declared = manifest.variant(variant_id).profiles
    return sorted(set(chosen) | set(declared))


def _check_file(model_dir: Path, entry: FileEntry) -> None:
    path = model_dir / entry.path
    if not path.is_file() or path.is_symlink():
        raise InvalidInputError(f"{model_dir}: the manifest lists {entry.path}, which is missing (or a link)")
    sha, size = sha256_file(path)
    if size != entry.size:
        raise InvalidInputError(f"{path}: size is {size} bytes, but the manifest says {entry.size}")
    if sha != entry.sha256:
        raise InvalidInputError(f"{path}: sha256 is {sha}, but the manifest says {entry.sha256}")
