"""The TLS files a component presents and trusts (mutual TLS on MQTT and gRPC), in one shape.

`TlsFiles` is what every config object carries (None = plain text, development only);
the helpers turn it into what ssl/paho and gRPC want, so no shell builds contexts
its own way. Plain text is allowed but logged loudly, once per component.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.protocols.errors import ContractError

__all__ = [
    "PLAIN_TEXT_WARNING",
    "TlsConfigError",
    "TlsFiles",
    "configure_mqtt_client",
    "grpc_channel_credentials",
    "grpc_server_credentials",
    "warn_plain_text",
]

log = logging.getLogger(__name__)

PLAIN_TEXT_WARNING = "plain-text, development only"
_warned: set[str] = set()
_warned_lock = threading.Lock()


class TlsConfigError(ContractError):
    """A TLS file is missing or unreadable, or TLS settings contradict the URL; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: `ca` verifies the peer; `cert`+`key` are our own identity (client or server).

    `crl` (servers only) lists revoked client certificates.
    """

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    crl: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key", "crl"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if (self.cert is None) != (self.key is None):
            raise TlsConfigError("tls: give both cert and key, or neither")

    @classmethod
    def in_dir(cls, folder: Path | str, name: str = "client") -> "TlsFiles":
        """`folder/ca.crt`, `folder/{name}.crt`, `folder/{name}.key` (the layout `tandem-hub pki issue` writes)."""
        folder = Path(folder)
        return cls(folder / "ca.crt", folder / f"{name}.crt", folder / f"{name}.key")

    def check(self) -> "TlsFiles":
        """Raise TlsConfigError naming the first file that is missing."""
        for name in ("ca", "cert", "key", "crl"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise TlsConfigError(f"tls.{name}: {path} does not exist (run `tandem-hub pki issue DEVICE`)")
        return self

    def read(self) -> tuple[bytes, bytes | None, bytes | None]:
        """(ca, cert, key) PEM bytes, for gRPC credentials."""
        self.check()
        return (
            self.ca.read_bytes(),
            self.cert.read_bytes() if self.cert else None,
            self.key.read_bytes() if self.key else None,
        )

    def client_context(self) -> ssl.SSLContext:
        """A client context: verify the server against `ca` and its host name, present cert+key."""
        self.check()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=str(self.ca))
        if self.cert is not None and self.key is not None:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def warn_plain_text(component: str, where: str) -> None:
    """Log, once per component, that it talks without TLS."""
    with _warned_lock:
        if component in _warned:
            return
        _warned.add(component)
    log.warning(
        "%s talks to %s in %s: no TLS, no client certificate, anyone on the network can read and "
        "spoof it (set tls files for production)",
        component,
        where,
        PLAIN_TEXT_WARNING.upper(),
    )


def configure_mqtt_client(client: Any, url: str, tls: TlsFiles | None, component: str) -> tuple[str, int]:
    """Apply `tls` to a paho client for `url` (mqtt:// or mqtts://); returns (host, port) to connect to.

    mqtts:// needs TLS files; mqtt:// with TLS files is refused too, so a config can't
    silently downgrade.
    """
    from tandem.protocols.topics import mqtt_url_uses_tls, parse_mqtt_url

    host, port = parse_mqtt_url(url)
    secure = mqtt_url_uses_tls(url)
    if secure and tls is None:
        raise TlsConfigError(f"{component}: {url} is mqtts:// but no tls files are configured (ca, cert, key)")
    if tls is not None and not secure:
        raise TlsConfigError(f"{component}: tls files are configured but {url} is plain mqtt://; use mqtts://")
    if tls is None:
        warn_plain_text(component, url)
    else:
        client.tls_set_context(tls.client_context())
    return host, port


def grpc_channel_credentials(tls: TlsFiles) -> Any:
    """gRPC channel credentials: trust `ca`, present cert+key (mutual TLS)."""
    import grpc

    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def grpc_server_credentials(tls: TlsFiles, require_client_cert: bool = True) -> Any:
    """gRPC server credentials: our cert+key, clients must present a certificate `ca` signed."""
    import grpc

    ca, cert, key = tls.read()
    if cert is None or key is None:
        raise TlsConfigError("grpc server tls: cert and key are required")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=require_client_cert)
