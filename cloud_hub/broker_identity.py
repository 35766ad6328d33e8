"""Count the broker's identity refusals at the hub.

The tandem_identity Mosquitto plugin (cloud_hub/mosquitto_plugin/) refuses a device that connects
with a client id not its own (e.g. dev-a's certificate asking for `tandem-ota-dev-b`, which would
otherwise knock dev-b off the broker) and writes one WARNING line to the broker's log. This
service tails that log, logs each refusal again in the hub's log with the certificate and the
client id, and counts them by certificate for /metrics (`tandem_hub_mqtt_identity_refusals_total`).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.5
# The plugin's line (after Mosquitto's "<time>: " prefix); it writes only [A-Za-z0-9._:-] inside the
# quotes (anything else as '?'), so a client id cannot forge a line. The CN is empty when there was none.
REFUSAL_RE = re.compile(
    r'tandem-identity: refused certificate CN "(?P<cn>[^"]*)" client id "(?P<client_id>[^"]*)" from "(?P<address>[^"]*)"'
)


class IdentityRefusals:
    """A HubService: follow the broker log from where it ends at start, count refusals by certificate CN."""

    def __init__(self, log_path: Path, poll_s: float = POLL_S) -> None:
        self.log_path = Path(log_path)
        self.poll_s = poll_s
        self.by_certificate: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.by_certificate.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_certificate)

    def feed(self, text: str) -> int:
        """Count the refusals in complete log lines; returns how many were found."""
        found = 0
        for m in REFUSAL_RE.finditer(text):
            cn = m.group("cn") or ""
            log.warning(
                "mqtt identity violation refused certificate=%s client_id=%s address=%s",
                cn or "(none)",
                m.group("client_id"),
                m.group("address"),
            )
            with self._lock:
                self.by_certificate[cn] = self.by_certificate.get(cn, 0) + 1
            found += 1
        return found

    def start(self, hub: Any) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0

        def run() -> None:
            nonlocal offset
            pending = b""
            while not self._stop.wait(self.poll_s):
                try:
                    size = self.log_path.stat().st_size
                    if size < offset:  # the log was truncated or replaced: read it from the start
                        offset, pending = 0, b""
                    if size == offset:
                        continue
                    with open(self.log_path, "rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read(size - offset)
                except OSError:
                    continue
                offset += len(chunk)
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n")
                if complete:
                    self.feed(complete.decode("utf-8", errors="replace"))

        self._thread = threading.Thread(target=run, name="broker-identity", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
