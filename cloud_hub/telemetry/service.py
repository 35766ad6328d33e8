"""TelemetryIngestService: ingestion + drift engine + alert announcements, for one hub process.

Alerts are stored (REST), published on the hub's /events topic and, when configured,
POSTed to a webhook from a worker thread so a slow receiver never stalls evaluation.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tandem.cloud_hub.storage.outage import FailureLog
from tandem.cloud_hub.storage.db import HubDatabase
from tandem.cloud_hub.telemetry.engine import (
    AlertChange,
    CohortKey,
    DriftConfig,
    DriftEngine,
    Evaluation,
    ManifestsProvider,
)
from tandem.cloud_hub.telemetry.clocks import DeviceClocks
from tandem.cloud_hub.telemetry.gaps import GapPolicy, GapTracker
from tandem.cloud_hub.telemetry.ingest import IngestConfig, TelemetryIngest
from tandem.cloud_hub.telemetry.retention import RetentionConfigError, RetentionPolicy, TelemetryRetention
from tandem.cloud_hub.telemetry.rollup_store import RollupStore
from tandem.cloud_hub.telemetry.rollups import MINUTE
from tandem.cloud_hub.telemetry.store import TelemetryStore
from tandem.protocols.mqtt_props import publish_properties
from tandem.protocols.telemetry_codec import TelemetryWindow, decode_window
from tandem.protocols.topics import EVENTS, TELEMETRY_RESEND, events_topic, telemetry_resend_topic

log = logging.getLogger(__name__)
_failures = FailureLog(log)


@dataclass(frozen=True)
class TelemetryServiceConfig:
    eval_interval_s: float = 10.0
    # raw windows (~550 bytes each stored) kept briefly, rolled up per device and cohort into minute and hour rows
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    # False: this process ingests and evaluates but leaves the rollup/retention pass to another (a lease holder
    # calls `service.retention.run_once()` itself)
    run_retention: bool = True
    webhook_url: str | None = None
    webhook_timeout_s: float = 3.0
    drift: DriftConfig = field(default_factory=DriftConfig)
    ingest: dict[str, Any] = field(default_factory=dict)  # extra IngestConfig fields (client_id, share_group, ...)
    gaps: GapPolicy = field(default_factory=GapPolicy)  # when missing windows are asked for again, and given up
    gap_tick_s: float = 1.0

    def __post_init__(self) -> None:
        needed = self.drift.span_s + self.drift.baseline_s
        if self.retention.minute_retention_s < needed:
            raise RetentionConfigError(
                f"telemetry.minute_retention_s: {self.retention.minute_retention_s:g} s is shorter than the drift "
                f"engine looks back (drift.span_s + drift.baseline_s = {needed:g} s): a restart could not refill it"
            )


def refill_engine(engine: DriftEngine, rollups: RollupStore, since: float) -> tuple[int, int]:
    """Fill a drift engine from the cohort minute rollups since `since`, then the raw windows the rollup pass has
    not reached yet (each window counted once); returns (windows, rollup rows)."""
    n = rows = 0
    for bucket, rollup in rollups.cohort_rollups(MINUTE, since):
        key = CohortKey.parse(bucket.model_name, bucket.model_version, bucket.cohort)
        engine.add_rollup(key, bucket.bucket, rollup.histograms, rollup.windows)
        rows += 1
        n += rollup.windows
    for payload, _, received_at in rollups.windows_after_cursor(since):
        try:
            engine.add(decode_window(payload), received_at)
            n += 1
        except Exception as exc:
            log.warning("stored window unreadable error=%s", exc)
    return n, rows


class TelemetryIngestService:
    """Start/stop the telemetry side of a hub; `status()` and `store` serve the REST routes."""

    def __init__(
        self,
        db: HubDatabase | TelemetryStore | str | Path,
        mqtt_url: str,
        manifests_provider: ManifestsProvider,
        config: TelemetryServiceConfig = TelemetryServiceConfig(),
    ) -> None:
        """`db`: a telemetry DB path or data dir (telemetry.sqlite), an opened TelemetryStore, or a HubDatabase
        already migrated with TELEMETRY_MIGRATIONS."""
        self.config = config
        if isinstance(db, TelemetryStore):
            self.store, self._owns_store = db, False
        elif isinstance(db, HubDatabase):
            self.store, self._owns_store = TelemetryStore(db), False
        else:
            self.store, self._owns_store = TelemetryStore.open(db), True
        self.engine = DriftEngine(manifests_provider, config.drift)
        self._lock = threading.Lock()
        self._alert_ids: dict[tuple[CohortKey, str], int] = {}
        self.ingest = TelemetryIngest(
            IngestConfig(mqtt_url=mqtt_url, cohort_tags=config.drift.cohort_tags, **config.ingest),
            self.store,
            on_windows=self._on_windows,
            cohort_of=lambda w: self.engine.cohort_key(w).cohort,
        )
        self.gaps = GapTracker(self.store, self._ask_resend, config.gaps)
        self.retention = TelemetryRetention(self.store, config.retention)  # run_once(): rollups, then deletes
        self.rollups = self.retention.rollups
        self.clocks = DeviceClocks()  # each device's clock offset: windows are filed on the hub's time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._webhook = ThreadPoolExecutor(1, thread_name_prefix="drift-webhook") if config.webhook_url else None
        self.evaluations = 0
        # Called with the device ids of each committed batch (the hub's presence heartbeats).
        self.on_seen: Callable[[Iterable[str]], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "TelemetryIngestService":
        self._rebuild(time.time())
        self.ingest.start()
        self._thread = threading.Thread(target=self._run, name="drift-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.ingest.stop()
        if self._webhook is not None:
            self._webhook.shutdown(wait=True, cancel_futures=False)
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "TelemetryIngestService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _rebuild(self, now: float) -> None:
        """Refill the engine from the cohort minute rollups, plus the raw windows not rolled up yet, and re-arm
        alerts that were open (hub restart): raw windows need not outlive the drift spans."""
        cfg = self.config.drift
        n, rows = refill_engine(self.engine, self.rollups, now - cfg.span_s - cfg.baseline_s)
        for row in self.store.open_alerts():
            key = CohortKey.parse(row["model_name"], row["model_version"], row["cohort"])
            self.engine.restore_open(key, row["signal"])
            self._alert_ids[(key, row["signal"])] = row["id"]
        log.info("drift engine rebuilt windows=%d rollup_rows=%d open_alerts=%d", n, rows, len(self._alert_ids))

    # -- work -------------------------------------------------------------------------

    def _ask_resend(self, device_id: str, payload: bytes) -> None:
        self.ingest.client.publish(
            telemetry_resend_topic(device_id), payload, qos=1, properties=publish_properties(TELEMETRY_RESEND)
        )

    def _on_windows(self, windows: list[tuple[TelemetryWindow, float]]) -> None:
        try:
            self.gaps.note((w.device_id, w.sequence) for w, _ in windows)
        except Exception as exc:  # gap tracking must not stop drift or presence
            _failures.failed("telemetry gap tracking failed", exc)
        filed = [(w, self.clocks.observe(w.device_id, w.end_unix, received)) for w, received in windows]
        with self._lock:
            self.engine.add_many(filed)
        if self.on_seen is not None:
            try:
                self.on_seen({w.device_id for w, _ in windows})
            except Exception:  # presence is best effort; ingestion must go on
                log.exception("telemetry on_seen hook failed")

    def _run(self) -> None:
        last_retention = time.monotonic()  # the first pass one interval after start: ingest resubscribes first
        next_eval = time.monotonic() + self.config.eval_interval_s
        while not self._stop.wait(min(self.config.gap_tick_s, self.config.eval_interval_s)):
            try:
                self.gaps.tick()
            except Exception as exc:
                _failures.failed("telemetry gap tick failed", exc)
            if self.config.run_retention and time.monotonic() - last_retention >= self.config.retention.interval_s:
                last_retention = time.monotonic()
                try:
                    self.retention.run_once()
                except Exception as exc:  # a failed pass leaves the cursor where it was: the next one redoes it
                    _failures.failed("telemetry rollup/retention pass failed", exc)
            if time.monotonic() < next_eval:
                continue
            next_eval = time.monotonic() + self.config.eval_interval_s
            try:
                self.evaluate(time.time())
            except Exception as exc:
                _failures.failed("drift evaluation failed", exc)

    def evaluate(self, now: float) -> Evaluation:
        """Evaluate every cohort now; store, publish and POST alert changes."""
        with self._lock:
            evaluation = self.engine.evaluate(now)
        self.evaluations += 1
        for change in evaluation.changes:
            self._announce(change, now)
        return evaluation

    def _announce(self, change: AlertChange, now: float) -> None:
        k = (change.key, change.signal)
        if change.transition == "opened":
            alert_id = self.store.open_alert(
                change.key.model_name, change.key.model_version, change.key.cohort, change.signal, change.stats, at=now
            )
            self._alert_ids[k] = alert_id
        else:
            alert_id = self._alert_ids.pop(k, 0)
            if alert_id:
                self.store.close_alert(alert_id, change.stats, at=now)
        event = {
            "type": f"drift.alert.{change.transition}",
            "alert_id": alert_id,
            "at": now,
            "signal": change.signal,
            **change.stats,
        }
        log.warning(
            "drift alert %s model=%s version=%s cohort=%s signal=%s value=%s",
            change.transition,
            change.key.model_name,
            change.key.model_version,
            change.key.cohort,
            change.signal,
            change.stats.get("value"),
        )
        body = json.dumps(event, default=float).encode()
        self.ingest.client.publish(events_topic(), body, qos=1, properties=publish_properties(EVENTS))
        if self._webhook is not None:
            self._webhook.submit(self._post_webhook, body)

    def _post_webhook(self, body: bytes) -> None:
        import httpx

        url = self.config.webhook_url
        if url is None:  # the executor exists only with a webhook configured
            return

        try:
            httpx.post(
                url,
                content=body,
                headers={"content-type": "application/json"},
                timeout=self.config.webhook_timeout_s,
            ).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("drift webhook failed url=%s error=%s", self.config.webhook_url, exc)

    # -- what REST reads ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        last = self.engine.last
        return {
            "evaluated_at": last.at if last else None,
            "signals": list(last.status) if last else [],
            "ingest": self.ingest.stats.as_dict(),
            "subscribed": self.ingest.subscribed,
            "gaps": self.gaps.stats(),  # windows missing end to end: open (being asked for) and finally lost
        }
