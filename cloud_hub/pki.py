"""The fleet's certificate authority: a CA, the hub's certificates, one client certificate per device, a CRL.

Files only, no daemon: `tandem-hub pki ...` drives it and the broker and gRPC server
read the files it writes. A device certificate's CN is the device id, which the broker
uses as the MQTT username (so ACL patterns pin a device to its own topics) and gRPC
can check against the request. Keys are EC P-256 and written 0600.

Layout under the PKI root::

    ca.crt ca.key crl.pem index.json
    hub/ca.crt hub/server.crt hub/server.key     (broker + gRPC listener)
    hub/ca.crt hub/hub.crt hub/hub.key           (the hub's own MQTT identity, CN=HUB_IDENTITY)
    devices/<id>/ca.crt devices/<id>/client.crt devices/<id>/client.key
    sites/<site>/ca.crt sites/<site>/client.crt sites/<site>/client.key   (a site broker's bridge)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tandem.cloud_hub.errors import ConflictError, HubError, InvalidInputError, NotFoundError
from tandem.protocols.tls import TlsFiles
from tandem.protocols.topics import HUB_SCOPE, TopicError, check_device_id, site_identity

log = logging.getLogger(__name__)

# The hub's MQTT/gRPC client identity. Not a valid device id (it starts with '_'),
# so no device certificate can ever carry it.
HUB_IDENTITY = HUB_SCOPE
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1")
CA_DAYS = 3650
CERT_DAYS = 825
# The CRL is rewritten on every revoke. OpenSSL (Mosquitto) refuses *every* client once
# a CRL's nextUpdate has passed, so it is long-lived; `pki revoke`/`pki crl` renew it.
CRL_DAYS = 3650


class PkiError(HubError):
    """The PKI directory is missing, incomplete or asked for something it cannot do."""

    status = 500


@dataclass(frozen=True)
class Issued:
    name: str
    serial: int
    kind: str  # "device", "site", "hub-server", "hub-client"
    not_after: str
    revoked_at: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _make_dirs(folder: Path) -> None:
    """Create `folder` and any missing parents 0755 whatever the umask: a root Mosquitto reads the CA, the
    hub's certificate and the CRL from here, so nobody else may be able to replace them."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        os.chmod(p, 0o755)


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` 0600 from the start (no window where the key is world-readable)."""
    _make_dirs(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    _make_dirs(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# Names a device certificate must never carry: they are host names the hub's own certificate (or a
# client's TLS check) would match, or names that read as the hub or a broker account.
RESERVED_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "broker",
        "hub",
        "mosquitto",
        "admin",
        "root",
    }
)
MAX_CERT_DAYS = 3650


def check_device_name(device_id: str) -> str:
    """A device id usable as a certificate CN and MQTT username (protocols.topics' rule), not a reserved name."""
    try:
        name = check_device_id(device_id)
    except TopicError as exc:
        raise InvalidInputError(str(exc)) from exc
    lowered = name.lower()
    if lowered in RESERVED_NAMES or lowered.endswith((".localhost", ".local")) or _looks_like_ip(lowered):
        raise InvalidInputError(
            f"device id {name!r} is reserved (a host name, address or service account); "
            "name devices after what they are, e.g. cam-017"
        )
    return name


def check_days(days: int) -> int:
    """Validity in whole days, 1..MAX_CERT_DAYS: 0 would issue an already expired certificate."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_CERT_DAYS:
        raise InvalidInputError(f"--days {days!r}: a certificate's validity must be 1 to {MAX_CERT_DAYS} days")
    return days


def _looks_like_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


class Pki:
    """A PKI directory; `Pki.init(root)` creates one, `Pki(root)` opens an existing one."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        if not self.ca_cert_path.is_file() or not self.ca_key_path.is_file():
            raise PkiError(f"{self.root}: no CA here (run `tandem-hub pki init --dir {self.root}`)")

    # -- paths ------------------------------------------------------------------------

    @property
    def ca_cert_path(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.root / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.root / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def hub_server_files(self) -> TlsFiles:
        """What the broker's TLS listener and the gRPC server present (clients verified against the CA)."""
        return TlsFiles(
            self.root / "hub" / "ca.crt",
            self.root / "hub" / "server.crt",
            self.root / "hub" / "server.key",
            crl=self.crl_path,
        )

    def hub_client_files(self) -> TlsFiles:
        """The hub's own MQTT identity (CN=HUB_IDENTITY): wider ACL rights than any device."""
        return TlsFiles.in_dir(self.root / "hub", "hub")

    def device_files(self, device_id: str) -> TlsFiles:
        return TlsFiles.in_dir(self.root / "devices" / check_device_name(device_id), "client")

    def site_files(self, site: str) -> TlsFiles:
        """A site broker's bridge identity (CN = protocols.topics.site_identity(site))."""
        return TlsFiles.in_dir(self.root / "sites" / check_device_name(site), "client")

    def site_identities(self) -> list[str]:
        """The CNs of the sites with a live bridge certificate: the broker's ACL names each one."""
        return sorted({r.name for r in self.issued() if r.kind == "site" and r.revoked_at is None})

    # -- creating ---------------------------------------------------------------------

    @classmethod
    def init(cls, root: Path | str, hostnames: Iterable[str] = (), *, force: bool = False) -> "Pki":
        """Create a CA, the hub's server certificate (SANs: localhost, 127.0.0.1 + `hostnames`), its client
        identity and an empty CRL. Refuses to overwrite an existing CA unless `force`."""
        root = Path(root)
        if (root / "ca.key").exists() and not force:
            raise ConflictError(f"{root}: a CA already exists (pass --force to replace it and every certificate)")
        _make_dirs(root)
        os.chmod(root, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tandem"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Tandem fleet CA"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(root / "ca.key", _key_pem(key))
        _write_public(root / "ca.crt", _cert_pem(cert))
        _write_public(root / "index.json", b"[]\n")
        pki = cls(root)
        pki.write_crl()
        pki.issue_hub(hostnames)
        log.info("pki initialised root=%s hostnames=%s", root, ",".join([*DEFAULT_HOSTNAMES, *hostnames]))
        return pki

    def issue_hub(self, hostnames: Iterable[str] = ()) -> TlsFiles:
        """(Re)issue the hub's server certificate and client identity."""
        names = [*DEFAULT_HOSTNAMES, *hostnames]
        server = self.hub_server_files()
        self._issue("hub-server", names[0], server, server_names=names)
        self._issue("hub-client", HUB_IDENTITY, self.hub_client_files())
        return server

    def issue_device(self, device_id: str, *, days: int = CERT_DAYS) -> TlsFiles:
        """A client certificate with CN = device id; refuses an id that already has a valid certificate."""
        check_device_name(device_id)
        check_days(days)
        live = [r for r in self.issued() if r.name == device_id and r.kind == "device" and r.revoked_at is None]
        if live:
            raise ConflictError(
                f"device {device_id!r} already has a certificate (serial {live[0].serial:x}); "
                f"revoke it first: tandem-hub pki revoke {device_id}"
            )
        files = self.device_files(device_id)
        self._issue("device", device_id, files, days=days)
        log.info("device certificate issued device=%s", device_id)
        return files

    def issue_site(self, site: str, *, days: int = CERT_DAYS) -> TlsFiles:
        """A site bridge's client certificate; refuses a site that already has a live one."""
        check_days(days)
        files = self.site_files(site)
        cn = site_identity(site)
        live = [r for r in self.issued() if r.name == cn and r.kind == "site" and r.revoked_at is None]
        if live:
            raise ConflictError(
                f"site {site!r} already has a bridge certificate (serial {live[0].serial:x}); "
                f"revoke it first: tandem-hub pki revoke {cn}"
            )
        self._issue("site", cn, files, days=days)
        log.info("site bridge certificate issued site=%s cn=%s", site, cn)
        return files

    def revoke(self, name: str) -> list[int]:
        """Revoke every live certificate of `name` (a device id) and rewrite the CRL; returns their serials."""
        with self._lock:
            records = self._load_index()
            stamp = _now().isoformat()
            serials = []
            for rec in records:
                if rec["name"] == name and rec.get("revoked_at") is None:
                    rec["revoked_at"] = stamp
                    serials.append(rec["serial"])
            if not serials:
                raise NotFoundError(f"no live certificate for {name!r} (see `tandem-hub pki list`)")
            self._save_index(records)
        self.write_crl()
        log.warning(
            "certificate revoked name=%s serials=%s; restart or SIGHUP the broker to apply",
            name,
            ",".join(f"{s:x}" for s in serials),
        )
        return serials

    def issued(self) -> list[Issued]:
        return [
            Issued(r["name"], r["serial"], r["kind"], r["not_after"], r.get("revoked_at")) for r in self._load_index()
        ]

    def revoked_serials(self) -> set[int]:
        return {r.serial for r in self.issued() if r.revoked_at is not None}

    def write_crl(self, days: int = CRL_DAYS) -> Path:
        """Rewrite crl.pem from the index, signed by the CA."""
        ca_cert, ca_key = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for rec in self.issued():
            if rec.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(rec.serial)
                    .revocation_date(dt.datetime.fromisoformat(rec.revoked_at))
                    .build()
                )
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    # -- internals --------------------------------------------------------------------

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key_path}: not an EC key")
        return cert, key

    def _issue(
        self,
        kind: str,
        common_name: str,
        files: TlsFiles,
        *,
        server_names: list[str] | None = None,
        days: int = CERT_DAYS,
    ) -> None:
        ca_cert, ca_key = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        serial = x509.random_serial_number()
        not_after = now + dt.timedelta(days=days)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tandem"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server_names:
            builder = builder.add_extension(_san(server_names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        assert files.cert is not None and files.key is not None
        _write_private(files.key, _key_pem(key))
        _write_public(files.cert, _cert_pem(cert))
        _write_public(files.ca, self.ca_cert_path.read_bytes())
        with self._lock:
            records = self._load_index()
            if kind not in ("device", "site"):  # the hub's certificates are replaced, not accumulated
                for rec in records:
                    if rec["kind"] == kind and rec.get("revoked_at") is None:
                        rec["revoked_at"] = now.isoformat()
            records.append(
                {
                    "name": common_name,
                    "serial": serial,
                    "kind": kind,
                    "not_after": not_after.isoformat(),
                    "revoked_at": None,
                }
            )
            self._save_index(records)

    def _load_index(self) -> list[dict]:
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise PkiError(f"{self.index_path}: not valid JSON ({exc}); restore it from a backup") from exc
        return list(data)

    def _save_index(self, records: list[dict]) -> None:
        _write_public(self.index_path, (json.dumps(records, indent=1) + "\n").encode())


class RevocationList:
    """The CRL as a set of serials, re-read when the file changes: what gRPC checks per call."""

    def __init__(self, crl_path: Path | str, ca_cert_path: Path | str | None = None) -> None:
        self.path = Path(crl_path)
        self._ca = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes()) if ca_cert_path else None
        self._mtime: int | None = None
        self._serials: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError as exc:
            raise PkiError(f"crl {self.path}: missing (run `tandem-hub pki init`)") from exc
        if mtime == self._mtime:
            return
        crl = x509.load_pem_x509_crl(self.path.read_bytes())
        if self._ca is not None and not crl.is_signature_valid(_issuer_key(self._ca)):
            raise PkiError(f"crl {self.path}: not signed by the fleet CA")
        with self._lock:
            self._serials = frozenset(r.serial_number for r in crl)
            self._mtime = mtime

    def is_revoked(self, cert_pem: bytes | str) -> bool:
        """True when the PEM certificate's serial is on the CRL (or it does not parse)."""
        try:
            self.refresh()
        except Exception:  # a CRL being rewritten: keep the last good one
            log.exception("crl refresh failed path=%s; using the previous list", self.path)
        if isinstance(cert_pem, str):
            cert_pem = cert_pem.encode()
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            return True
        return cert.serial_number in self._serials


# public keys that can sign a CRL (what CertificateRevocationList.is_signature_valid takes), less DSA:
# cryptography 51 deprecates it and warns on every touch of `dsa.DSAPublicKey`, which printed two warning
# lines on every tandem-hub command; a DSA-signed CRL is refused as an unsupported issuer key
IssuerKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | rsa.RSAPublicKey


_ISSUER_KEYS = (
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    rsa.RSAPublicKey,
)


def _issuer_key(ca: x509.Certificate) -> IssuerKey:
    """The CA certificate's public key, if it is of a kind that signs (an X25519 CA could not have signed the CRL)."""
    key = ca.public_key()
    if not isinstance(key, _ISSUER_KEYS):
        raise PkiError(f"the fleet CA's {type(key).__name__} cannot sign a CRL")
    return key


def common_name(cert_pem: bytes | str) -> str | None:
    """The certificate's CN (a device id for device certificates)."""
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode()
    try:
        attrs = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    return str(attrs[0].value) if attrs else None
