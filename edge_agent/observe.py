"""The per-request hook: every answered request feeds the OTA health watch and, when on, telemetry.

Called by InferenceService on the I/O loop thread once per reply, so it stays a few
counter bumps plus TelemetryService.record (figures: docs/figures.md); `take_health` runs on the OTA
thread and swaps the counters out under a lock held for nanoseconds.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from tandem.edge_agent.ota.machine import HealthFigures
from tandem.tasks import row_agreement

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 4096  # latencies kept for the p95 between two probes (the newest win)


class RequestObserver:
    """Counts answers for the health watch and forwards them to `telemetry` (a TelemetryService) if set."""

    def __init__(self, telemetry: Any = None, latency_samples: int = LATENCY_SAMPLES) -> None:
        self.telemetry = telemetry
        self._lock = threading.Lock()
        self._requests = 0
        self._errors = 0
        self._unsure = 0
        self._latency_ms: deque[float] = deque(maxlen=latency_samples)
        self._telemetry_failures = 0

    def answered(
        self,
        source: str,
        seconds: float,
        confidence: np.ndarray,
        labels: np.ndarray,
        feeds: Mapping[str, np.ndarray] | None,
        unsure: bool,
        budget_spent: bool = False,
        signals: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """One answer; `unsure`: the edge model was not confident (sent to the hub, or would have been);
        `budget_spent`: degraded because the fallback budget was spent; `signals`: the task's drift signals."""
        ms = seconds * 1000.0
        with self._lock:
            self._requests += 1
            self._unsure += unsure
            self._latency_ms.append(ms)
        if self.telemetry is not None:
            try:
                if signals:
                    self.telemetry.record(
                        source, ms, confidence, labels, feeds, budget_spent=budget_spent, signals=signals
                    )
                elif budget_spent:
                    self.telemetry.record(source, ms, confidence, labels, feeds, budget_spent=True)
                else:
                    self.telemetry.record(source, ms, confidence, labels, feeds)
            except Exception:  # telemetry must never fail a request
                self._telemetry_failed()

    def shadowed(self, samples: int, agree: int) -> None:
        """A shadow comparison came back (any thread): `agree` of `samples` rows matched the hub's top-1."""
        if self.telemetry is not None:
            try:
                self.telemetry.record_shadow(samples, agree)
            except Exception:
                self._telemetry_failed()

    def compared(
        self,
        policy: Any,
        edge_outputs: Sequence[tuple[str, np.ndarray]],
        edge_labels: np.ndarray,
        cloud_outputs: Sequence[tuple[str, np.ndarray]],
        cloud_labels: np.ndarray,
    ) -> None:
        """The hub answered: count how far the edge's own answer was from it, by the task
        (tandem.tasks.row_agreement on a TaskPolicy's output; same top-1 label for a softmax classifier)."""
        if self.telemetry is None:
            return
        try:
            values = edge_cloud_agreement(policy, edge_outputs, edge_labels, cloud_outputs, cloud_labels)
            if values is not None:
                self.telemetry.record_agreement(values)
        except Exception:  # an answer the task cannot compare (other shapes): never fails the request
            self._telemetry_failed()

    def failed(self, seconds: float) -> None:
        """One error reply (bad input, overload, runtime failure)."""
        ms = seconds * 1000.0
        with self._lock:
            self._requests += 1
            self._errors += 1
            self._latency_ms.append(ms)
        if self.telemetry is not None:
            try:
                self.telemetry.record("error", ms)
            except Exception:
                self._telemetry_failed()

    def take_health(self) -> HealthFigures:
        """Figures since the previous call (the OTA watch's HealthProbe contract)."""
        with self._lock:
            requests, errors, unsure = self._requests, self._errors, self._unsure
            latencies = list(self._latency_ms)
            self._requests = self._errors = self._unsure = 0
            self._latency_ms.clear()
        return HealthFigures.of(requests, errors, unsure, latencies)

    def _telemetry_failed(self) -> None:
        self._telemetry_failures += 1
        if self._telemetry_failures in (1, 10, 100) or self._telemetry_failures % 1000 == 0:
            log.exception("telemetry record failed failures=%d", self._telemetry_failures)


def edge_cloud_agreement(
    policy: Any,
    edge_outputs: Sequence[tuple[str, np.ndarray]],
    edge_labels: np.ndarray,
    cloud_outputs: Sequence[tuple[str, np.ndarray]],
    cloud_labels: np.ndarray,
) -> np.ndarray | None:
    """Per-row agreement in [0, 1] of the edge's answer with the hub's; None when the task has no measure."""
    spec = getattr(policy, "spec", None)
    if spec is None:  # ConfidencePolicy: a softmax classifier, compared by its labels
        if edge_labels.shape != cloud_labels.shape:
            return None
        return (edge_labels == cloud_labels).astype(np.float64)
    edge, cloud = dict(edge_outputs), dict(cloud_outputs)
    e = edge.get(spec.output, next(iter(edge.values()), None))
    c = cloud.get(spec.output, next(iter(cloud.values()), None))
    if e is None or c is None:
        return None
    return row_agreement(spec, e, c)
