"""Telemetry on a hub replica: every replica ingests its share ($share/<group>/...), one evaluates drift.

Each window reaches exactly one replica; (device, sequence) storage drops redeliveries. The drift
engine needs every window, so the lease holder feeds it from the database rather than from its
own share, and only it evaluates, announces alerts and purges by retention. Gap tracking judges
against the database too (`ReplicaGapTracker`): a sequence another replica stored is not a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any, Iterable

from tandem.cloud_hub.cluster.lease import _changed
from tandem.cloud_hub.telemetry.engine import DriftEngine, ManifestsProvider
from tandem.cloud_hub.telemetry.gaps import MAX_GAP_ROWS, GapTracker
from tandem.cloud_hub.telemetry.service import TelemetryIngestService, TelemetryServiceConfig
from tandem.protocols.telemetry_codec import TelemetryWindow, decode_window

log = logging.getLogger(__name__)

__all__ = ["ReplicaGapTracker", "ReplicaTelemetryService"]

FEED_OVERLAP_S = 30.0  # windows are re-read this far back: another replica may commit one received earlier


class ReplicaGapTracker(GapTracker):
    """Gaps judged against what every replica stored (the database), not this process's memory."""

    def note(self, windows: Iterable[tuple[str, int]]) -> None:
        by_device: dict[str, set[int]] = defaultdict(set)
        for device, seq in windows:
            by_device[device].add(seq)
        now, opened = self.clock(), 0
        with self._lock, self.store.db.transaction() as tx:
            for device, seqs in sorted(by_device.items()):
                for seq in sorted(seqs):  # filled: a gap any replica opened for it closes
                    self.recovered += _changed(
                        tx.execute("DELETE FROM telemetry_gaps WHERE device_id=? AND sequence=?", [device, seq])
                    )
                rows = list(tx.query("SELECT last_seq FROM telemetry_seq WHERE device_id=?", [device]))
                last, top = (int(rows[0]["last_seq"]) if rows else 0), max(seqs)
                self._last[device] = max(last, top)
                if top <= last:
                    continue
                first = max(last + 1, top - MAX_GAP_ROWS)
                stored = {
                    int(r["sequence"])
                    for r in tx.query(
                        "SELECT sequence FROM telemetry_windows WHERE device_id=? AND sequence>=? AND sequence<?",
                        [device, first, top],
                    )
                }
                for seq in range(first, top):
                    if seq not in seqs and seq not in stored:
                        tx.execute(
                            "INSERT INTO telemetry_gaps (device_id, sequence, opened_at) VALUES (?, ?, ?) "
                            "ON CONFLICT DO NOTHING",
                            [device, seq, now],
                        )
                        opened += 1
                tx.execute(
                    "INSERT INTO telemetry_seq (device_id, last_seq, lost_unasked) VALUES (?, ?, ?) "
                    "ON CONFLICT (device_id) DO UPDATE SET last_seq=excluded.last_seq, "
                    "lost_unasked=telemetry_seq.lost_unasked+excluded.lost_unasked "
                    "WHERE telemetry_seq.last_seq < excluded.last_seq",
                    [device, top, first - (last + 1)],
                )
        if opened:
            log.warning("telemetry gaps opened=%d devices=%s", opened, sorted(by_device)[:5])

    def tick(self) -> int:
        """First close open gaps whose window is stored after all (filled by a replica that did not open
        them, past a race between two replicas' transactions), then ask for the rest as usual."""
        with self._lock, self.store.db.transaction() as tx:
            self.recovered += _changed(
                tx.execute(
                    "DELETE FROM telemetry_gaps WHERE state='open' AND EXISTS (SELECT 1 FROM telemetry_windows w "
                    "WHERE w.device_id=telemetry_gaps.device_id AND w.sequence=telemetry_gaps.sequence)"
                )
            )
        return super().tick()


class ReplicaTelemetryService(TelemetryIngestService):
    """TelemetryIngestService for a replica: ingest and gaps always; drift, alerts and retention while `lead`."""

    def __init__(
        self,
        db: Any,
        mqtt_url: str,
        manifests_provider: ManifestsProvider,
        config: TelemetryServiceConfig = TelemetryServiceConfig(),
    ) -> None:
        super().__init__(db, mqtt_url, manifests_provider, config)
        self._manifests_provider = manifests_provider
        self.gaps = ReplicaGapTracker(self.store, self._ask_resend, self.config.gaps)
        self._leading = threading.Event()
        self._fed: dict[tuple[str, int], float] = {}  # windows the engine has, and when they were received
        self._fed_until = 0.0

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def start(self) -> "ReplicaTelemetryService":
        self.ingest.start()  # no engine rebuild: a follower's engine stays empty
        self._thread = threading.Thread(target=self._run, name="replica-telemetry", daemon=True)
        self._thread.start()
        return self

    def lead(self) -> None:
        """This replica took the lease: refill the engine from what every replica stored, re-arm open alerts."""
        now = time.time()
        recent = self.store.db.query(
            "SELECT device_id, sequence, received_at FROM telemetry_windows WHERE received_at>=?",
            [now - FEED_OVERLAP_S],
        )
        with self._lock:
            self.engine = DriftEngine(self._manifests_provider, self.config.drift)
            self._alert_ids.clear()
            self._rebuild(now)  # the engine as a restarted hub fills it
            self._fed = {(str(r["device_id"]), int(r["sequence"])): float(r["received_at"]) for r in recent}
            self._fed_until = now
        self._leading.set()

    def follow(self) -> None:
        """The lease went elsewhere: stop evaluating and drop what the engine held."""
        self._leading.clear()
        with self._lock:
            self.engine = DriftEngine(self._manifests_provider, self.config.drift)
            self._alert_ids.clear()
            self._fed.clear()

    def _feed(self, now: float) -> int:
        """Add the windows any replica stored since the last feed (re-reading FEED_OVERLAP_S) to the engine."""
        since = self._fed_until - FEED_OVERLAP_S
        rows = self.store.db.query(
            "SELECT device_id, sequence, payload, received_at FROM telemetry_windows WHERE received_at>=? "
            "ORDER BY received_at",
            [since],
        )
        new: list[tuple[TelemetryWindow, float]] = []
        for row in rows:
            key = (str(row["device_id"]), int(row["sequence"]))
            if key in self._fed:
                continue
            received = float(row["received_at"])
            self._fed[key] = received
            try:
                window = decode_window(bytes(row["payload"]))
            except Exception as exc:
                log.warning("stored window unreadable device=%s error=%s", key[0], exc)
                continue
            new.append((window, self.clocks.observe(window.device_id, window.end_unix, received)))
            self._fed_until = max(self._fed_until, received)
        horizon = now - self.config.drift.span_s - self.config.drift.baseline_s - FEED_OVERLAP_S
        self._fed = {k: t for k, t in self._fed.items() if t >= horizon}
        if new:
            with self._lock:
                self.engine.add_many(new)
        return len(new)

    def _on_windows(self, windows: list[tuple[TelemetryWindow, float]]) -> None:
        try:
            self.gaps.note((w.device_id, w.sequence) for w, _ in windows)
        except Exception:  # gap tracking must not stop ingestion or presence
            log.exception("telemetry gap tracking failed")
        if self.on_seen is not None:
            try:
                self.on_seen({w.device_id for w, _ in windows})
            except Exception:
                log.exception("telemetry on_seen hook failed")

    def _run(self) -> None:
        last_retention = time.monotonic()
        next_eval = time.monotonic() + self.config.eval_interval_s
        while not self._stop.wait(min(self.config.gap_tick_s, self.config.eval_interval_s)):
            try:
                self.gaps.tick()  # safe on every replica: each ask is claimed in a transaction
            except Exception:
                log.exception("telemetry gap tick failed")
            if not self.leading:
                continue
            if time.monotonic() - last_retention >= self.config.retention.interval_s:
                last_retention = time.monotonic()
                try:
                    self.retention.run_once()  # rollups, then deletes past retention: once in the fleet
                except Exception:  # a failed pass leaves the cursor where it was: the next one redoes it
                    log.exception("telemetry rollup/retention pass failed")
            if time.monotonic() < next_eval:
                continue
            next_eval = time.monotonic() + self.config.eval_interval_s
            try:
                self._feed(time.time())
                self.evaluate(time.time())
            except Exception:
                log.exception("drift evaluation failed")
