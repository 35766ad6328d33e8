"""Whether the agent may serve a model folder: its manifest's signatures against the keys this
device trusts, whether the folder came by OTA or was placed by hand.

`trust_verdict` is pure (a manifest document and keys in, a verdict out); `check_model_dir`
reads the folder's manifest.json and raises UntrustedModelError unless the verdict is trusted
or the operator explicitly allowed unsigned models (then it logs a WARNING each time).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tandem.edge_agent.errors import ConfigError, ModelLoadError, UntrustedModelError
from tandem.protocols import signing
from tandem.protocols.manifest import MANIFEST_FILENAME

log = logging.getLogger(__name__)

TRUSTED, UNSIGNED, UNTRUSTED, TAMPERED = "trusted", "unsigned", "untrusted", "tampered"


@dataclass(frozen=True)
class TrustPolicy:
    """What this device trusts: `keys` may make the outer signature (the hub's release key, or a
    publisher's key for folders placed by hand); with `require_publisher`, a counter-signed
    manifest must also carry a publisher signature by one of `publisher_keys`."""

    keys: tuple[Ed25519PublicKey, ...] = ()
    publisher_keys: tuple[Ed25519PublicKey, ...] = ()
    require_publisher: bool = False
    allow_unsigned: bool = False

    @classmethod
    def from_files(
        cls,
        keys: Sequence[Path],
        publisher_keys: Sequence[Path] = (),
        *,
        require_publisher: bool = False,
        allow_unsigned: bool = False,
        where: str = "trust.keys",
    ) -> "TrustPolicy":
        return cls(
            tuple(_load(p, where) for p in keys),
            tuple(_load(p, "trust.publisher_keys") for p in publisher_keys),
            require_publisher,
            allow_unsigned,
        )


@dataclass(frozen=True)
class TrustVerdict:
    status: str  # trusted | unsigned | untrusted | tampered
    detail: str
    signer: str | None = None  # key id of the trusted key that made the outer signature
    publisher: str | None = None  # key id of the trusted publisher, when checked
    checked: list[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return self.status == TRUSTED

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "detail": self.detail, "signer": self.signer, "publisher": self.publisher}


def trust_verdict(doc: Mapping[str, Any], policy: TrustPolicy) -> TrustVerdict:
    """Check the outer signature against `policy.keys`, then (if required) the publisher signature."""
    try:
        signer = signing.verify_by_any(doc, list(policy.keys))
    except signing.UnsignedError:
        return TrustVerdict(UNSIGNED, "the manifest is not signed")
    except signing.UntrustedKeyError as exc:
        return TrustVerdict(UNTRUSTED, str(exc))
    except signing.SignatureError as exc:
        return TrustVerdict(TAMPERED, str(exc))
    publisher = None
    if policy.require_publisher:
        if doc.get(signing.PUBLISHER_FIELD) is None:
            return TrustVerdict(
                UNTRUSTED,
                "trust.require_publisher is on, but the manifest carries only one signature "
                "(a hub's counter-signed release has two)",
                signer=signer,
            )
        try:
            publisher = signing.verify_by_any(doc, list(policy.publisher_keys), field=signing.PUBLISHER_FIELD)
        except signing.UntrustedKeyError as exc:
            return TrustVerdict(UNTRUSTED, str(exc), signer=signer)
        except signing.SignatureError as exc:
            return TrustVerdict(TAMPERED, str(exc), signer=signer)
    return TrustVerdict(
        TRUSTED,
        f"signed by trusted key {signer}" + (f", published by {publisher}" if publisher else ""),
        signer=signer,
        publisher=publisher,
    )


def check_model_dir(model_dir: Path, policy: TrustPolicy) -> TrustVerdict:
    """The verdict for `model_dir`; UntrustedModelError unless trusted or `policy.allow_unsigned`."""
    path = Path(model_dir) / MANIFEST_FILENAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: no manifest here; is this a directory written by tandem-compile?")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}/{MANIFEST_FILENAME}: cannot read it ({exc})") from exc
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{model_dir}/{MANIFEST_FILENAME}: not a JSON object")
    verdict = trust_verdict(doc, policy)
    if verdict.trusted:
        return verdict
    if not policy.keys and verdict.status != UNSIGNED:
        verdict = TrustVerdict(
            UNTRUSTED, f"{verdict.detail}; no trusted key is configured (trust.keys, ota.trusted_key)"
        )
    if policy.allow_unsigned:
        log.warning(
            "SERVING AN UNVERIFIED MODEL dir=%s status=%s reason=%s (trust.allow_unsigned is on)",
            model_dir,
            verdict.status,
            verdict.detail,
        )
        return verdict
    raise UntrustedModelError(
        f"{model_dir}: refusing to serve a model that is {verdict.status.upper()}: {verdict.detail}. Trust its signer "
        "with trust.keys (the hub's release key: tandem-hub keys release; or the publisher's *.pub.pem), or set "
        "trust.allow_unsigned = true for development"
    )


def _load(path: Path, where: str) -> Ed25519PublicKey:
    try:
        return signing.load_public_key(Path(path))
    except (OSError, signing.SignatureError) as exc:
        raise ConfigError(f"{where}: {path}: not an ed25519 public key PEM ({exc})") from exc
