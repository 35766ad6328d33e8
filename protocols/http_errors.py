"""One line that says why an HTTP(S) request to a Tandem hub failed and what to change, for every client.

Used by cloud_hub/client.py (the CLI, the simulator) and open to the agent's own HTTP clients: a refused
connection, http:// against a TLS hub, https:// against a plain one, a certificate the CA does not verify,
a token the hub refuses. Each message names the URL and the fix; "is it running?" is said only when
nothing listens.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

__all__ = ["describe_connection_error", "describe_refusal", "speaks_tls"]

# OpenSSL's words for "the other side did not answer with TLS" (1.1: wrong version number; 3.x may say
# record layer failure or packet length too long).
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure", "packet length too long")


def describe_connection_error(
    url: str, exc: BaseException, ca: str | Path | None = None, *, url_option: str = "--url"
) -> str:
    """Why no HTTP answer came from `url` (exc: what the HTTP library raised), with the fix.

    `url_option`: the caller's flag for the hub's URL (`tandem-agent init` calls it --hub).
    """
    scheme, host, port = _where(url)
    chain = list(_causes(exc))
    verify = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if verify is not None:
        reason = str(verify).split(" (_ssl.c:")[0]  # "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ..."
        if "hostname mismatch" in reason.lower() or "not valid for" in reason.lower():
            return (
                f"{url}: the hub's certificate is not valid for the host {host!r} ({reason}); connect by a name "
                "or address the certificate holds (the ones given to `tandem-hub pki init`)"
            )
        if ca is not None:
            return (
                f"{url}: {reason}: the CA {ca} did not sign this hub's certificate; "
                "pass the hub's own CA, <tls_dir>/ca.crt of its `tandem-hub pki init` folder"
            )
        return (
            f"{url}: {reason}: the system trust store does not know the hub's CA; "
            "pass it with --ca <tls_dir>/ca.crt (env TANDEM_HUB_CA)"
        )
    if any(isinstance(e, ssl.SSLError) and any(w in str(e) for w in _NOT_TLS) for e in chain):
        return f"{url}: the hub speaks plain HTTP, not TLS; use http://{host}:{port}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in str(exc).lower():
        return (
            f"{url}: connection refused, nothing listens there; start the hub (tandem-hub serve) "
            f"or point {url_option} (env TANDEM_HUB_URL) at it"
        )
    if any(isinstance(e, (socket.timeout, TimeoutError)) for e in chain) or "timed out" in str(exc).lower():
        return f"{url}: no answer in time ({_first_line(exc)}); check the address, a firewall, or the hub's load"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"{url}: unknown host {host!r} ({_first_line(exc)}); check {url_option} (env TANDEM_HUB_URL)"
    if scheme == "http" and speaks_tls(host, port):
        return f"{url}: the hub speaks HTTPS; use https://{host}:{port} with --ca <tls_dir>/ca.crt (env TANDEM_HUB_CA)"
    return f"{url}: no HTTP answer ({_first_line(exc)}); is this a Tandem hub's REST address?"


def describe_refusal(url: str, method: str, path: str, status: int, detail: str, token_given: bool) -> str:
    """The hub answered 401 or 403: which, and what to do."""
    if status == 401 and not token_given:
        return (
            f"{method} {url}{path}: HTTP 401, no token given ({detail}); pass --token or set TANDEM_HUB_TOKEN "
            "(the first admin token: tandem-hub tokens create --scope admin --name me --data-dir <hub data dir>)"
        )
    if status == 401:
        return (
            f"{method} {url}{path}: HTTP 401, the hub refused the token ({detail}); it is wrong, revoked or "
            "from another hub: pass a valid one with --token (env TANDEM_HUB_TOKEN)"
        )
    return (
        f"{method} {url}{path}: HTTP 403, the token's scope is too small ({detail}); use a token with a larger "
        "scope (read < operate < admin)"
    )


def speaks_tls(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when a TLS handshake with host:port completes (no verification: this only asks what it speaks)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return True
    except (OSError, ValueError):
        return False


def _where(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, parts.hostname or "", port or (443 if scheme == "https" else 80)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        yield current
        current = current.__cause__ or current.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
