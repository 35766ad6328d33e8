"""Revocation that cuts open MQTT sessions, not only new connections, and ends the device's tokens.

Mosquitto reads the CRL when it starts and checks it only at the TLS handshake, so a
revoked device's open session would keep publishing. This service watches the CRL
(`tandem-hub pki revoke` rewrites it) and restarts the hub's own Mosquitto on the same
port when it changes: every session is cut, the revoked certificate is refused when it
reconnects, and everyone else reconnects to their persisted sessions. The rest of the hub
keeps running; the gRPC server checks the CRL on every call already.

It also revokes the REST `device` tokens of every device whose certificate was revoked
(those created before the revocation), at start and on every change, so a stolen device
loses its download token with its certificate.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 1.0


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class RevocationWatch:
    """A HubService: poll the CRL every `poll_s` and restart the broker when it changed."""

    def __init__(self, crl_path: Path, poll_s: float = POLL_S, pki: Any = None) -> None:
        self.crl_path = Path(crl_path)
        self.poll_s = poll_s
        self.pki = pki  # a cloud_hub.pki.Pki: whose certificates were revoked, and when
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def revoke_tokens(self, hub: Any) -> list[str]:
        """Revoke the device tokens of devices whose certificates are revoked; the token ids revoked."""
        tokens = getattr(hub, "tokens", None)
        if self.pki is None or tokens is None:
            return []
        revoked: list[str] = []
        for cert in self.pki.issued():
            if cert.kind != "device" or cert.revoked_at is None:
                continue
            at = dt.datetime.fromisoformat(cert.revoked_at).timestamp()
            revoked += tokens.revoke_device(cert.name, issued_before=at)
        return revoked

    def _revoke_tokens_logged(self, hub: Any) -> None:
        try:
            self.revoke_tokens(hub)
        except Exception as exc:  # keep watching: the next change tries again
            log.error("revoking the tokens of revoked devices failed: %s", exc)

    def start(self, hub: Any) -> None:
        seen = _stamp(self.crl_path)
        self._revoke_tokens_logged(hub)  # revocations made while the hub was down

        def run() -> None:
            nonlocal seen
            while not self._stop.wait(self.poll_s):
                now = _stamp(self.crl_path)
                if now == seen:
                    continue
                seen = now
                self._revoke_tokens_logged(hub)
                log.warning(
                    "certificate revocation list changed path=%s: revoked devices' tokens ended; restarting "
                    "the hub's own broker (if it runs one) to cut their open sessions",
                    self.crl_path,
                )
                try:
                    hub.restart_broker()
                    self.restarts += 1
                except Exception as exc:  # keep watching: the next change tries again
                    log.error("broker restart after a revocation failed: %s", exc)

        self._thread = threading.Thread(target=run, name="revocation-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
