"""Telemetry retention: roll raw windows up, then delete what is past its retention, in bounded batches.

`TelemetryRetention.run_once()` is one plain pass a lease holder can call (it must run on one
hub replica at a time: two passes at once would both read the same windows before either
cursor commits). The loop that calls it every `interval_s` lives in service.py. A raw window
is deleted only once it is older than `raw_retention_s` AND the rollup cursor is past it,
so nothing is deleted before it has been summed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.telemetry.rollup_store import RollupStore
from tandem.cloud_hub.telemetry.rollups import HOUR, MINUTE
from tandem.cloud_hub.telemetry.store import TelemetryStore

log = logging.getLogger(__name__)


class RetentionConfigError(ConfigError):
    """A retention setting that cannot work (named in the message)."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each form of telemetry is kept, and how a pass is paced.

    A hub takes these from its [telemetry] config (cloud_hub/config.py), whose defaults are compact (raw
    windows 5 min, cohort minute rows 90 min, device minute rows 20 min). The class defaults keep raw windows
    an hour for in-process harnesses (tests, the simulator) that count the windows a hub stored."""

    raw_retention_s: float = 3600.0  # raw windows (~550 bytes each stored): recent detail, rollout gates
    minute_retention_s: float = 6 * 3600.0  # per-device and per-cohort minute rollups
    # per-device minute rows only (None: minute_retention_s). Per device they cost the most after raw windows,
    # while the drift engine needs only the cohort minute rows
    device_minute_retention_s: float | None = None
    hour_retention_s: float = 400 * 86400.0  # hour rollups: what is kept long
    settle_s: float = 30.0  # windows younger than this wait for the next pass (late commits, replica clocks)
    batch: int = 2000  # raw windows summed per transaction
    delete_chunk: int = 5000  # rows deleted per transaction
    max_batches: int = 500  # per pass; the rest waits for the next pass
    interval_s: float = 30.0  # how often the service's loop runs a pass

    def __post_init__(self) -> None:
        for name in ("raw_retention_s", "minute_retention_s", "hour_retention_s", "interval_s"):
            if not getattr(self, name) > 0:
                raise RetentionConfigError(f"{name}: {getattr(self, name)!r} must be > 0")
        for name in ("batch", "delete_chunk", "max_batches"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise RetentionConfigError(f"{name}: {getattr(self, name)!r} must be a positive integer")
        if self.settle_s < 0:
            raise RetentionConfigError(f"settle_s: {self.settle_s!r} must be >= 0")
        if self.raw_retention_s <= self.settle_s:
            raise RetentionConfigError(
                f"raw_retention_s: {self.raw_retention_s:g} must exceed settle_s ({self.settle_s:g}): windows "
                "would be deleted before they are rolled up"
            )
        if self.device_minute_retention_s is not None and not self.device_minute_retention_s > 0:
            raise RetentionConfigError(f"device_minute_retention_s: {self.device_minute_retention_s!r} must be > 0")
        if max(self.minute_retention_s, self.device_minutes_s) > self.hour_retention_s:
            raise RetentionConfigError(
                f"minute_retention_s: {max(self.minute_retention_s, self.device_minutes_s):g} must be <= "
                f"hour_retention_s ({self.hour_retention_s:g})"
            )

    @property
    def device_minutes_s(self) -> float:
        """How long per-device minute rows are kept."""
        return self.minute_retention_s if self.device_minute_retention_s is None else self.device_minute_retention_s


@dataclass(frozen=True)
class RetentionReport:
    """What one pass did."""

    rolled_up: int
    unreadable: int
    raw_deleted: int
    minute_deleted: int
    hour_deleted: int
    behind: bool  # max_batches ran out before the rollup caught up
    seconds: float

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(self.__dict__)


class TelemetryRetention:
    """Rollup + retention over one telemetry database; run_once() is safe to call again at any time."""

    def __init__(
        self,
        store: TelemetryStore,
        policy: RetentionPolicy = RetentionPolicy(),
        clock: Callable[[], float] = time.time,
        rollups: RollupStore | None = None,
    ) -> None:
        self.store = store
        self.rollups = rollups or RollupStore(store.db)
        self.policy = policy
        self.clock = clock

    def roll_up(self, now: float | None = None) -> tuple[int, int, bool]:
        """Sum every settled raw window not yet rolled up: (windows, unreadable, still behind)."""
        now = self.clock() if now is None else now
        upto = now - self.policy.settle_s
        done = bad = 0
        for _ in range(self.policy.max_batches):
            result = self.rollups.roll_up_batch(upto, self.policy.batch)
            done += result.windows
            bad += result.unreadable
            if result.windows + result.unreadable < self.policy.batch:
                return done, bad, False
        return done, bad, True

    def run_once(self, now: float | None = None) -> RetentionReport:
        """Roll up, then delete raw windows, minute rollups and hour rollups past their retention."""
        started = time.monotonic()
        now = self.clock() if now is None else now
        p = self.policy
        rolled, bad, behind = self.roll_up(now)
        # never delete a window the cursor has not passed (strictly older than the cursor's receipt time)
        raw_before = min(now - p.raw_retention_s, self.rollups.cursor().received_at)
        raw_deleted = 0
        if raw_before > 0:
            self.rollups.note_raw_purged(raw_before)  # first: a reader never trusts raw for a range being deleted
            raw_deleted = self.store.purge(raw_before, p.delete_chunk)
        minute_deleted = self.rollups.purge(
            MINUTE, now - p.minute_retention_s, p.delete_chunk, devices_before=now - p.device_minutes_s
        )
        hour_deleted = self.rollups.purge(HOUR, now - p.hour_retention_s, p.delete_chunk)
        report = RetentionReport(
            rolled, bad, raw_deleted, minute_deleted, hour_deleted, behind, round(time.monotonic() - started, 4)
        )
        if rolled or raw_deleted or minute_deleted or hour_deleted:
            log.info(
                "telemetry retention rolled_up=%d raw_deleted=%d minute_deleted=%d hour_deleted=%d behind=%s",
                rolled,
                raw_deleted,
                minute_deleted,
                hour_deleted,
                behind,
            )
        return report
