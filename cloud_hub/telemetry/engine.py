"""The drift engine: merges windows per (model version, cohort) into time buckets and
compares a sliding current span with the manifest's reference.

Kept free of I/O: `add` takes decoded windows, `evaluate(now)` returns status rows and
alert transitions; the service stores and announces them. Buckets (default 10 s)
bound memory by time, not by fleet size: 20,000 devices in one cohort cost the same
as one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from tandem.cloud_hub.telemetry.alerts import AlertState, Hysteresis, Transition, step
from tandem.cloud_hub.telemetry import rollups
from tandem.cloud_hub.telemetry.drift import compare, rate_rise
from tandem.protocols.telemetry_codec import TelemetryWindow

log = logging.getLogger(__name__)

# (model_name, model_version) -> the manifest (object with .drift_reference, or its dict), or None if unknown.
ManifestsProvider = Callable[[str, str], Any]

FALLBACK_RATE = "fallback_rate"
ERROR_RATE = "error_rate"
CONFIDENCE = "confidence"
CLASSES = "classes"
TASK_PREFIX = (
    "task:"  # task drift signals: "task:boxes", "task:sequence_length", ... (protocols.drift.TASK_SIGNAL_EDGES)
)
UNKNOWN_RETRY_S = 60.0  # a model registered after its first telemetry gets its reference within this


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and spans; every number here is a knob an operator may turn."""

    span_s: float = 300.0  # the sliding "current" span
    baseline_s: float = 3600.0  # rates: the span before `current` is the baseline
    bucket_s: float = 10.0
    min_samples: int = 200  # per distribution signal, in the current span
    min_requests: int = 100  # per rate signal, in current and baseline
    distribution: Hysteresis = field(default_factory=lambda: Hysteresis(open_above=0.25, close_below=0.10))
    rate: Hysteresis = field(default_factory=lambda: Hysteresis(open_above=0.10, close_below=0.05))
    p_max: float = 1e-3  # chi-square p-value under which a rise counts as significant
    cohort_tags: tuple[str, ...] | None = None  # tag keys that split cohorts; None = all tags
    max_future_s: float = 60.0  # unused: windows are filed on the hub's time (telemetry.clocks); kept for configs

    def __post_init__(self) -> None:
        if self.span_s <= 0 or self.bucket_s <= 0 or self.baseline_s < 0:
            raise ValueError("span_s and bucket_s must be > 0, baseline_s >= 0")


@dataclass(frozen=True)
class CohortKey:
    model_name: str
    model_version: str
    profile: str
    tags: tuple[tuple[str, str], ...] = ()

    @cached_property
    def cohort(self) -> str:
        """The cohort as stored and shown: JSON of profile and tags."""
        return json.dumps({"profile": self.profile, "tags": dict(self.tags)}, sort_keys=True)

    @classmethod
    def parse(cls, model_name: str, model_version: str, cohort: str) -> "CohortKey":
        """The key of a cohort as stored (the JSON `cohort` gives)."""
        c = json.loads(cohort)
        return cls(model_name, model_version, str(c.get("profile", "")), tuple(sorted((c.get("tags") or {}).items())))

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "profile": self.profile,
            "tags": dict(self.tags),
        }


def cohort_of(window: TelemetryWindow, cohort_tags: tuple[str, ...] | None = None) -> CohortKey:
    tags = {k: v for k, v in window.tags.items() if cohort_tags is None or k in cohort_tags}
    return CohortKey(window.model_name, window.model_version, window.profile, tuple(sorted(tags.items())))


class Counts:
    """Summed histograms of a set of windows; vectors grow to the longest seen."""

    __slots__ = ("requests", "confidence", "classes", "inputs", "windows")

    def __init__(self) -> None:
        self.requests = np.zeros(4, dtype=np.int64)  # edge, cloud, edge-degraded, error
        self.confidence = np.zeros(20, dtype=np.int64)
        self.classes = np.zeros(0, dtype=np.int64)
        self.inputs: dict[str, np.ndarray] = {}
        self.windows = 0

    def add_flat(self, layout: tuple, flat: np.ndarray, windows: int) -> None:
        """Add summed rows laid out by `_flatten`: requests, confidence, classes, then each input histogram."""
        n_conf, n_classes, inputs = layout
        self.requests += flat[:4]
        i = 4
        if n_conf == 20:
            self.confidence += flat[i : i + 20]
        i += n_conf
        if n_classes:
            self.classes = _add(self.classes, flat[i : i + n_classes])
        i += n_classes
        for key, n in inputs:
            self.inputs[key] = _add(self.inputs.get(key, np.zeros(0, dtype=np.int64)), flat[i : i + n])
            i += n
        self.windows += windows

    def compact(self) -> None:
        """Keep only the request counts (what the rate baseline needs)."""
        if self.inputs or len(self.classes):
            self.confidence = np.zeros(20, dtype=np.int64)
            self.classes = np.zeros(0, dtype=np.int64)
            self.inputs = {}

    def add(self, other: "Counts") -> None:
        self.requests += other.requests
        self.confidence += other.confidence
        self.classes = _add(self.classes, other.classes)
        for key, arr in other.inputs.items():
            self.inputs[key] = _add(self.inputs.get(key, np.zeros(0, dtype=np.int64)), arr)
        self.windows += other.windows


def _flatten(w: TelemetryWindow) -> tuple[tuple, list[int]]:
    """(layout, one flat row of counts): rows with equal layouts can be summed as a matrix."""
    r = w.requests
    row = [r.edge, r.cloud, r.edge_degraded, r.error]
    row += w.confidence_counts
    row += w.class_counts
    inputs = []
    for s in w.inputs:
        row += s.counts
        inputs.append((f"{s.input}.{s.summary}", len(s.counts)))
    for t in w.task_signals:  # summed beside the input histograms, under their own prefix
        row += t.counts
        inputs.append((TASK_PREFIX + t.signal, len(t.counts)))
    return (len(w.confidence_counts), len(w.class_counts), tuple(inputs)), row


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) < len(b):
        a = np.concatenate([a, np.zeros(len(b) - len(a), dtype=np.int64)])
    a[: len(b)] += b
    return a


@dataclass(frozen=True)
class Reference:
    """The manifest's drift reference, flattened to signal -> counts (and edges for inputs)."""

    counts: Mapping[str, np.ndarray]

    @classmethod
    def from_manifest(cls, manifest: Any) -> "Reference":
        ref = manifest.get("drift_reference") if isinstance(manifest, Mapping) else manifest.drift_reference
        ref = ref or {}
        counts: dict[str, np.ndarray] = {}
        for inp, per in (ref.get("inputs") or {}).items():
            for summ, spec in per.items():
                counts[f"input:{inp}.{summ}"] = np.asarray(spec["counts"], dtype=np.int64)
        if ref.get("confidence"):
            counts[CONFIDENCE] = np.asarray(ref["confidence"]["counts"], dtype=np.int64)
        if ref.get("classes"):
            counts[CLASSES] = np.asarray(ref["classes"]["counts"], dtype=np.int64)
        for name, spec in (ref.get("tasks") or {}).items():
            counts[TASK_PREFIX + name] = np.asarray(spec["counts"], dtype=np.int64)
        return cls(counts)


@dataclass(frozen=True)
class AlertChange:
    transition: Transition
    key: CohortKey
    signal: str
    stats: dict[str, Any]


@dataclass
class Evaluation:
    at: float
    status: list[dict[str, Any]]
    changes: list[AlertChange]


class DriftEngine:
    """Per-cohort buckets, evaluation and hysteresis. Not thread-safe: the service locks."""

    def __init__(self, manifests: ManifestsProvider, config: DriftConfig = DriftConfig()) -> None:
        self.config = config
        self._manifests = manifests
        self._refs: dict[tuple[str, str], tuple[Reference | None, float]] = {}
        self._buckets: dict[CohortKey, dict[int, Counts]] = defaultdict(dict)
        self._alerts: dict[tuple[CohortKey, str], AlertState] = {}
        self._keys: dict[tuple, CohortKey] = {}
        self.last: Evaluation | None = None

    # -- input ----------------------------------------------------------------------

    def add(self, window: TelemetryWindow, received_at: float) -> CohortKey:
        return self.add_many([(window, received_at)])[0]

    def add_many(self, windows: list[tuple[TelemetryWindow, float]]) -> list[CohortKey]:
        """Add a batch: windows of one cohort, bucket and histogram layout are summed in one numpy call."""
        cfg = self.config
        groups: dict[tuple[CohortKey, int, tuple], list[list[int]]] = defaultdict(list)
        keys: list[CohortKey] = []
        for window, received_at in windows:
            # `received_at`: the hub time the window belongs to (its receipt, or the device's time corrected
            # by its clock offset: cloud_hub.telemetry.clocks); the device's own clock never files it
            t = received_at
            if not math.isfinite(t):
                t = window.end_unix
            key = self.cohort_key(window)
            keys.append(key)
            layout, row = _flatten(window)
            groups[(key, int(t // cfg.bucket_s), layout)].append(row)
        for (key, bucket, layout), rows in groups.items():
            per = self._buckets[key]
            counts = per.get(bucket)
            if counts is None:
                counts = per[bucket] = Counts()
            counts.add_flat(layout, np.asarray(rows, dtype=np.int64).sum(axis=0), len(rows))
        return keys

    def add_rollup(self, key: CohortKey, at: float, histograms: Mapping[str, np.ndarray], windows: int) -> None:
        """Add one cohort rollup row (rollups.CohortRollup's histograms) as if its windows arrived at `at`:
        how a restarted hub, or a new lease holder, refills the engine from what the database keeps long."""
        counts = Counts()
        for name, arr in histograms.items():
            vec = np.asarray(arr, dtype=np.int64)
            if name == rollups.REQUESTS:
                counts.requests[: min(4, len(vec))] += vec[:4]
            elif name == CONFIDENCE:
                if len(vec) == 20:
                    counts.confidence += vec
            elif name == CLASSES:
                counts.classes = _add(counts.classes, vec)
            elif name != rollups.LATENCY:
                counts.inputs[name] = vec.copy()  # "<input>.<summary>" or "task:<signal>", as _flatten names them
        counts.windows = windows
        per = self._buckets[key]
        bucket = int(at // self.config.bucket_s)
        existing = per.get(bucket)
        if existing is None:
            per[bucket] = counts
        else:
            existing.add(counts)

    def cohort_key(self, window: TelemetryWindow) -> CohortKey:
        """The cohort a window belongs to (cached: building it costs more than the lookup)."""
        raw = (window.model_name, window.model_version, window.profile, tuple(window.tags.items()))
        key = self._keys.get(raw)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[raw] = cohort_of(window, self.config.cohort_tags)
        return key

    def restore_open(self, key: CohortKey, signal: str) -> None:
        """Mark an alert open (after a hub restart, from the alerts table)."""
        self._alerts[(key, signal)] = AlertState(is_open=True)

    def reference(self, model_name: str, model_version: str) -> Reference | None:
        """The version's reference; an unknown model is asked for again after UNKNOWN_RETRY_S."""
        k = (model_name, model_version)
        cached = self._refs.get(k)
        if cached is not None and (cached[0] is not None or time.monotonic() - cached[1] < UNKNOWN_RETRY_S):
            return cached[0]
        try:
            manifest = self._manifests(model_name, model_version)
        except Exception as exc:  # unknown model or registry error: evaluate rates only, for now
            log.warning("no manifest for drift model=%s version=%s error=%s", model_name, model_version, exc)
            manifest = None
        ref = Reference.from_manifest(manifest) if manifest is not None else None
        self._refs[k] = (ref, time.monotonic())
        return ref

    def forget_reference(self, model_name: str, model_version: str) -> None:
        self._refs.pop((model_name, model_version), None)

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, now: float) -> Evaluation:
        cfg = self.config
        cur_from = int((now - cfg.span_s) // cfg.bucket_s)
        base_from = int((now - cfg.span_s - cfg.baseline_s) // cfg.bucket_s)
        status: list[dict[str, Any]] = []
        changes: list[AlertChange] = []
        for key in list(self._buckets):
            per = self._buckets[key]
            for b in [b for b in per if b <= base_from]:
                del per[b]  # older than the baseline: memory stays bounded by time
            if not per:
                del self._buckets[key]
                continue
            current, baseline = Counts(), Counts()
            for b, counts in per.items():
                if b > cur_from:
                    current.add(counts)
                else:
                    counts.compact()  # baseline buckets only feed the rates: drop their histograms
                    baseline.add(counts)
            for signal, value, significant, stats in self._signals(key, current, baseline):
                rule = cfg.rate if signal in (FALLBACK_RATE, ERROR_RATE) else cfg.distribution
                state, transition = step(self._alerts.get((key, signal), AlertState()), value, rule, significant)
                self._alerts[(key, signal)] = state
                row = {
                    **key.as_dict(),
                    "signal": signal,
                    "value": value,
                    "significant": significant,
                    "alert": "open" if state.is_open else "closed",
                    **stats,
                }
                status.append(row)
                if transition is not None:
                    changes.append(AlertChange(transition, key, signal, row))
        self.last = Evaluation(now, status, changes)
        return self.last

    def _signals(
        self, key: CohortKey, cur: Counts, base: Counts
    ) -> Iterator[tuple[str, float | None, bool, dict[str, Any]]]:
        """(signal, statistic, drifted, stats) for each drift signal of a cohort, baseline against current."""
        cfg = self.config
        ref = self.reference(key.model_name, key.model_version)
        if ref is not None:
            observed: dict[str, np.ndarray] = {CONFIDENCE: cur.confidence, CLASSES: cur.classes}
            observed.update({k if k.startswith(TASK_PREFIX) else f"input:{k}": v for k, v in cur.inputs.items()})
            for signal, ref_counts in ref.counts.items():
                counts = observed.get(signal)
                if counts is None or (signal.startswith(("input:", TASK_PREFIX)) and len(counts) != len(ref_counts)):
                    continue  # this device population did not send it, or binned over other edges
                n = int(counts.sum())
                if n < cfg.min_samples:
                    yield signal, None, False, {"n_cur": n}
                    continue
                st = compare(ref_counts, counts)
                yield signal, st.psi, st.p_value < cfg.p_max, st.as_dict()
        total, btotal = int(cur.requests.sum()), int(base.requests.sum())
        for signal, hits, bhits in (
            (FALLBACK_RATE, cur.requests[1] + cur.requests[2], base.requests[1] + base.requests[2]),
            (ERROR_RATE, cur.requests[3], base.requests[3]),
        ):
            if total < cfg.min_requests or btotal < cfg.min_requests:
                yield signal, None, False, {"n_cur": total, "n_base": btotal}
                continue
            rise, p = rate_rise(int(bhits), btotal, int(hits), total)
            yield (
                signal,
                rise,
                p < cfg.p_max,
                {"rate": hits / total, "baseline_rate": bhits / btotal, "p_value": p, "n_cur": total, "n_base": btotal},
            )
