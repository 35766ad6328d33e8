"""Revocation that cuts open MQTT sessions, not only new connections.

Mosquitto reads the CRL when it starts and checks it only at the TLS handshake, so a
revoked device's open session would keep publishing. This service watches the CRL
(`tandem-hub pki revoke` rewrites it) and restarts the hub's own Mosquitto on the same
port when it changes: every session is cut, the revoked certificate is refused when it
reconnects, and everyone else reconnects to their persisted sessions. The rest of the hub
keeps running; the gRPC server checks the CRL on every call already.
"""

from __future__ import annotations

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

    def __init__(self, crl_path: Path, poll_s: float = POLL_S) -> None:
        self.crl_path = Path(crl_path)
        self.poll_s = poll_s
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, hub: Any) -> None:
        seen = _stamp(self.crl_path)

        def run() -> None:
            nonlocal seen
            while not self._stop.wait(self.poll_s):
                now = _stamp(self.crl_path)
                if now == seen:
                    continue
                seen = now
                log.warning(
                    "certificate revocation list changed path=%s: restarting the broker to cut open "
                    "sessions of revoked devices",
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
