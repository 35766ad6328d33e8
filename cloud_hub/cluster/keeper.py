"""The lease loop of one replica: take the lease when free, renew it while held, stop the singletons before
anyone else may take it.

The holder counts its lease valid until (start of its last successful renewal) + ttl - margin on its
own clock; the row says start + ttl, so the holder stops first and a follower takes over only after
`expires_at`. `on_acquired(epoch)` starts the singletons, `on_lost()` stops them; both run under one
lock, so they never overlap, and a watchdog thread stops the singletons on time even while a renewal
hangs in the database (the answer it brings back late is ignored).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.cluster.lease import LeaseState, LeaseTable

log = logging.getLogger(__name__)

__all__ = ["LeaseKeeper", "LeaseTiming"]

WATCH_S = 0.1  # how often the watchdog looks at the holder's own deadline


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lives, how often the holder renews it and a follower asks for it (seconds).

    Takeover after a holder dies takes at most ttl_s + poll_s (plus the singletons' start)."""

    ttl_s: float = 6.0
    renew_s: float = 1.5
    poll_s: float = 1.0
    margin_s: float = 1.0  # the holder stops this long before the row's expiry

    def __post_init__(self) -> None:
        if self.renew_s <= 0 or self.renew_s * 2 + self.margin_s > self.ttl_s:
            raise ConfigError(
                f"lease timing: renew_s ({self.renew_s}) * 2 + margin_s ({self.margin_s}) must fit in ttl_s "
                f"({self.ttl_s}), so one late renewal does not lose the lease"
            )
        if self.poll_s <= 0 or self.margin_s < 0:
            raise ConfigError("lease timing: poll_s must be > 0 and margin_s >= 0")


class LeaseKeeper:
    """One thread per replica; `held` and `epoch` say where it stands."""

    def __init__(
        self,
        table: LeaseTable,
        name: str,
        holder: str,
        timing: LeaseTiming,
        on_acquired: Callable[[int], None],
        on_lost: Callable[[], None],
        url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table, self.name, self.holder, self.timing = table, name, holder, timing
        self.on_acquired, self.on_lost, self.url, self.clock = on_acquired, on_lost, url, clock
        self.epoch: int | None = None
        self.acquired_at: float | None = None
        self.takeovers = 0
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._lock = threading.RLock()  # epoch changes and the callbacks; never held across a database call
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.epoch is not None

    def start(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name=f"lease-{self.name}-watch", daemon=True)
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        """Stop the singletons and hand the lease back at once (a clean shutdown needs no expiry)."""
        self._stop.set()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(30)
        self._thread = self._watchdog = None

    def current(self) -> LeaseState | None:
        return self.table.get(self.name)

    def step(self) -> None:
        """One round: take or renew, and lose when the lease can no longer be counted on (tests call it).

        The database calls run outside `_lock`, so the watchdog can stop the singletons while one hangs."""
        start = self.clock()
        with self._lock:
            if self.epoch is not None and self._expired():
                self._lose("not renewed in time")
                return
            epoch = self.epoch
        if epoch is None:
            try:
                state = self.table.try_acquire(self.name, self.holder, self.timing.ttl_s, start, self.url)
            except Exception as exc:  # the database is away: nothing held, nothing to stop
                log.warning("lease acquire failed name=%s holder=%s error=%r", self.name, self.holder, exc)
                return
            if state.holder != self.holder:
                return
            with self._lock:
                self._valid_until = start + self.timing.ttl_s - self.timing.margin_s
                self.epoch, self.acquired_at = state.epoch, start
                self.takeovers += 1
                log.warning("lease acquired name=%s holder=%s epoch=%d", self.name, self.holder, state.epoch)
                try:
                    self.on_acquired(state.epoch)
                except Exception:
                    log.exception("lease singletons failed to start name=%s; giving the lease up", self.name)
                    self._lose("singletons failed to start", release=True)
            return
        try:
            ok = self.table.renew(self.name, self.holder, epoch, self.timing.ttl_s, start)
        except Exception as exc:
            log.warning("lease renew failed name=%s holder=%s error=%r", self.name, self.holder, exc)
            ok = False
        with self._lock:
            if self.epoch != epoch:  # the watchdog stopped the singletons while this call hung: its answer is stale
                return
            if ok and self.clock() < start + self.timing.ttl_s - self.timing.margin_s:
                self._valid_until = start + self.timing.ttl_s - self.timing.margin_s
            elif not ok:
                self._lose(
                    "renewal refused (another replica holds a newer epoch)" if not self._expired() else "expired"
                )

    def _expired(self) -> bool:
        return self.clock() >= self._valid_until

    def _lose(self, why: str, release: bool = False) -> None:
        epoch, self.epoch = self.epoch, None
        log.warning("lease lost name=%s holder=%s epoch=%s why=%s", self.name, self.holder, epoch, why)
        try:
            self.on_lost()
        except Exception:
            log.exception("lease singletons failed to stop name=%s", self.name)
        if release and epoch is not None:
            try:
                self.table.release(self.name, self.holder, epoch)
            except Exception as exc:
                log.warning("lease release failed name=%s error=%r", self.name, exc)

    def _watch(self) -> None:
        """Stop the singletons on time even while `step` hangs in a database call."""
        while not self._stop.wait(WATCH_S):
            with self._lock:
                if self.epoch is not None and self._expired():
                    self._lose("not renewed in time")

    def _run(self) -> None:
        next_step = 0.0
        while not self._stop.is_set():
            if self.clock() >= next_step:
                self.step()
                next_step = self.clock() + (self.timing.renew_s if self.epoch is not None else self.timing.poll_s)
            self._stop.wait(max(0.0, min(next_step - self.clock(), 0.2)))
        with self._lock:
            if self.epoch is not None:
                self._lose("replica stopping", release=True)
