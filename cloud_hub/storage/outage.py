"""How a hub loop logs a failed pass: the database being away is one line now and then, not a traceback a tick.

PostgreSQL down or restarting fails every gap tick, presence flush and rollout tick until it is back; a
traceback each time buries the one line that says why. Anything else keeps its traceback (a bug).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from tandem.cloud_hub.storage.db import DatabaseUnavailableError

REPEAT_S = 30.0  # while the database stays away, each loop says so again this often


class FailureLog:
    """One per module: `failed(what, exc)` from a loop's `except Exception`."""

    def __init__(self, logger: logging.Logger, repeat_s: float = REPEAT_S) -> None:
        self.logger = logger
        self.repeat_s = repeat_s
        self._last: dict[str, float] = {}

    def failed(self, what: str, exc: BaseException, *args: Any) -> None:
        """Log `what` (a %-format with `args`) failing with `exc`."""
        if isinstance(exc, DatabaseUnavailableError):
            now = time.monotonic()
            if now - self._last.get(what, -math.inf) >= self.repeat_s:
                self._last[what] = now
                self.logger.warning(what + " (database unavailable, retrying): %s", *args, exc)
            return
        self._last.pop(what, None)
        self.logger.error(what, *args, exc_info=exc)
