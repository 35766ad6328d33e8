"""The hub's own Mosquitto is restarted when it dies (OOM killer, a crash, kill -9), on the same port.

Without it a dead broker child stayed dead until the hub restarted: telemetry, OTA commands and device
presence stopped while /healthz said ok. Agents and the hub's MQTT clients reconnect by themselves;
what the broker accepted since its last save comes back through the agents' replay (see broker.py).
While it is down, or a restart fails, `problem` says so (the hub's /healthz lists it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.cloud_hub.hub import Hub

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often the child is looked at
MAX_BACKOFF_S = 30.0  # between failed restarts (1, 2, 4, ... s up to this)


class BrokerWatch:
    """A HubService: looks at the hub's Mosquitto child every `check_s` and restarts it when it has exited."""

    def __init__(self, check_s: float = CHECK_S, max_backoff_s: float = MAX_BACKOFF_S) -> None:
        self.check_s = check_s
        self.max_backoff_s = max_backoff_s
        self.problem: str | None = None  # what is wrong with the broker now, for /healthz
        self.restarts = 0
        self._hub: Hub | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, hub: "Hub") -> None:
        self._hub = hub
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hub-broker-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.wait(self.check_s):
            assert self._hub is not None
            code = self._hub.own_broker_exit_code()
            if code is None:
                continue
            since = time.time()
            self.problem = f"the hub's MQTT broker exited (code {code}); restarting it"
            log.error("hub broker exited code=%s; restarting it on the same port", code)
            while not self._stop.is_set():
                try:
                    url = self._hub.respawn_broker()
                except Exception as exc:  # BrokerError (port taken, bad config), OSError: say so, try again
                    self.problem = (
                        f"the hub's MQTT broker exited (code {code}) {time.time() - since:.0f}s ago and does not "
                        f"restart: {exc}"
                    )
                    log.error("hub broker restart failed error=%s; next try in %.0fs", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
                if url is not None:
                    self.restarts += 1
                    log.warning("hub broker restarted url=%s after %.1fs down", url, time.time() - since)
                self.problem = None
                backoff = 1.0
                break
