"""The agent's metrics: counters and latency histograms, rendered as Prometheus text or OpenMetrics.

Plain and thread-safe; no client library, so `tandem[edge]` stays small (protocols.prom
renders). Counters end in `_total` and are counters; values read at scrape time are
registered with `gauge()` or `counter()`; every per-model series carries model, version and
variant labels (counted per served variant, so an OTA swap starts new series instead of
relabelling old counts); `build_info`, `model_info` and process_* metrics come with every scrape.
"""

from __future__ import annotations

import bisect
import platform
import threading
from importlib import metadata
from typing import Callable, Iterable

from tandem.edge_agent.modes import ACTIONS
from tandem.protocols.prom import Family, process_families
from tandem.protocols.prom import render as render_families

# Counts registered through gauge() by callers written before the names were fixed, and the
# counter each really is; None drops a duplicate of another family (the outbox's per-class
# drops cover the telemetry class). New code calls counter() with the right name.
_LEGACY_GAUGES: dict[str, str | None] = {
    "tandem_agent_batches_total": "tandem_agent_batches_total",
    "tandem_agent_inline_runs_total": "tandem_agent_inline_runs_total",
    "tandem_agent_model_swaps": "tandem_agent_model_swaps_total",
    "tandem_agent_hard_examples_dropped": "tandem_agent_hard_examples_dropped_total",
    "tandem_agent_telemetry_outbox_dropped": None,
}

# seconds; fine at the low end where edge answers live, coarse where fallbacks do
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SOURCES = ("edge", "cloud", "edge-degraded", "error")


class Histogram:
    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, cumulative = [], 0
        for bound, c in zip(self.buckets, self.counts):
            cumulative += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        tail = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{tail} {self.sum:.6f}")
        out.append(f"{name}_count{tail} {self.count}")
        return out


class ModelMetrics:
    """The per-model counts of one (model, version, variant): each serving service writes to its own,
    so a hot swap neither resets nor misattributes what the previous variant answered. The methods
    are the hot path's: a few additions under the agent's lock."""

    def __init__(self, labels: dict[str, str], lock: threading.Lock) -> None:
        self.labels = labels
        self._lock = lock
        self.requests = {s: 0 for s in SOURCES}
        self.errors: dict[str, int] = {}
        self.fallback_attempts = 0
        self.latency = {s: Histogram() for s in SOURCES}
        self.runtime_latency = Histogram()
        self.fallback_latency = Histogram()
        self.decisions = {a: 0 for a in ACTIONS}  # the serving mode's decision per request
        self.shadow_samples = 0  # rows compared with the hub in shadow mode
        self.shadow_agree = 0  # of those, rows whose top-1 class matched
        self.shadow_failed = 0  # shadow calls the hub did not answer
        self.shadow_skipped = 0  # shadow samples not taken: too many already in flight

    def observe_request(self, source: str, seconds: float, error_code: str | None = None) -> None:
        # every reply comes here: Histogram.observe inlined, and no Histogram() built per call
        # for setdefault (half the cost: docs/figures.md)
        h = self.latency.get(source)
        with self._lock:
            if h is None:
                h = self.latency.setdefault(source, Histogram())
            self.requests[source] = self.requests.get(source, 0) + 1
            h.counts[bisect.bisect_left(h.buckets, seconds)] += 1
            h.sum += seconds
            h.count += 1
            if error_code:
                self.errors[error_code] = self.errors.get(error_code, 0) + 1

    def observe_runtime(self, seconds: float) -> None:
        h = self.runtime_latency
        with self._lock:
            h.counts[bisect.bisect_left(h.buckets, seconds)] += 1
            h.sum += seconds
            h.count += 1

    def observe_fallback(self, seconds: float) -> None:
        with self._lock:
            self.fallback_attempts += 1
            self.fallback_latency.observe(seconds)

    def observe_decision(self, action: str) -> None:
        # `action`: an edge_agent.modes.Action (a str enum, same hash) or its value. I/O loop thread
        # only (one writer), so a plain bump without the lock: ~50 ns per request
        self.decisions[action] += 1

    def observe_shadow(self, samples: int, agree: int) -> None:
        with self._lock:
            self.shadow_samples += samples
            self.shadow_agree += agree

    def observe_shadow_failed(self, skipped: bool = False) -> None:
        with self._lock:
            if skipped:
                self.shadow_skipped += 1
            else:
                self.shadow_failed += 1

    def answered(self) -> int:
        return sum(v for k, v in self.requests.items() if k != "error")

    def used(self) -> bool:
        return bool(sum(self.requests.values()) or self.fallback_attempts or any(self.decisions.values()))


class AgentMetrics:
    """What /metrics shows. Per-model series carry model, version and variant labels, counted in a
    ModelMetrics per served variant (`for_model`); agent-wide gauges are read through callbacks at
    scrape time. The observe_* methods here count for the variant served now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str], ModelMetrics] = {}
        self._unassigned = ModelMetrics({"model": "", "version": "", "variant": ""}, self._lock)  # before any model
        self.current = self._unassigned
        # name -> (type, help, per_model, [(labels, read)]): values read at scrape time
        self.gauges: dict[str, tuple[str, str, bool, list[tuple[dict[str, str], Callable[[], float]]]]] = {}
        self.model_info: Callable[[], tuple[str, str, str]] | None = None  # (model, version, variant) now

    def for_model(self, model: str, version: str, variant: str) -> ModelMetrics:
        """The counts of this variant (made on first use), which becomes the one served now."""
        key = (model, version, variant)
        with self._lock:
            slot = self._models.get(key)
            if slot is None:
                slot = self._models[key] = ModelMetrics(
                    {"model": model, "version": version, "variant": variant}, self._lock
                )
            self.current = slot
        return slot

    # what callers without their own ModelMetrics (tests, the fast lane of an older service) count
    def observe_request(self, source: str, seconds: float, error_code: str | None = None) -> None:
        self.current.observe_request(source, seconds, error_code)

    def observe_runtime(self, seconds: float) -> None:
        self.current.observe_runtime(seconds)

    def observe_fallback(self, seconds: float) -> None:
        self.current.observe_fallback(seconds)

    def observe_decision(self, action: str) -> None:
        self.current.observe_decision(action)

    def observe_shadow(self, samples: int, agree: int) -> None:
        self.current.observe_shadow(samples, agree)

    def observe_shadow_failed(self, skipped: bool = False) -> None:
        self.current.observe_shadow_failed(skipped)

    # totals over every variant served since start
    def _slots(self) -> list[ModelMetrics]:
        slots = list(self._models.values())
        return slots + [self._unassigned] if self._unassigned.used() or not slots else slots

    def _total(self, name: str) -> int:
        """One per-slot count summed over every slot (the agent-wide figure)."""
        return int(sum(getattr(m, name) for m in self._slots()))

    @property
    def fallback_attempts(self) -> int:
        return self._total("fallback_attempts")

    @property
    def shadow_samples(self) -> int:
        return self._total("shadow_samples")

    @property
    def shadow_agree(self) -> int:
        return self._total("shadow_agree")

    @property
    def shadow_failed(self) -> int:
        return self._total("shadow_failed")

    @property
    def shadow_skipped(self) -> int:
        return self._total("shadow_skipped")

    @property
    def decisions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self._slots():
            for action, n in m.decisions.items():
                out[action] = out.get(action, 0) + n
        return out

    def shadow_agreement(self) -> float | None:
        with self._lock:
            samples, agree = self.shadow_samples, self.shadow_agree
        return agree / samples if samples else None

    def fallback_rate(self) -> float:
        with self._lock:
            answered = sum(m.answered() for m in self._slots())
            return self.fallback_attempts / answered if answered else 0.0

    def gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float],
        labels: dict[str, str] | None = None,
        per_model: bool = False,
    ) -> None:
        """A value read at scrape time; several registrations of one name with different labels form one family.
        `per_model`: the value belongs to the variant served now (its batcher), labelled with it."""
        if name in _LEGACY_GAUGES:
            fixed = _LEGACY_GAUGES[name]
            if fixed is not None:
                self.counter(fixed, help_text, read, labels, per_model)
            return
        self._register(name, "gauge", help_text, read, labels, per_model)

    def counter(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float],
        labels: dict[str, str] | None = None,
        per_model: bool = False,
    ) -> None:
        """A monotonic count read at scrape time (its name ends in _total)."""
        self._register(name, "counter", help_text, read, labels, per_model)

    def _register(
        self,
        name: str,
        kind: str,
        help_text: str,
        read: Callable[[], float],
        labels: dict[str, str] | None,
        per_model: bool,
    ) -> None:
        Family(name, kind, help_text)  # validates the name against the type now, not at the first scrape
        with self._lock:
            _, _, _, series = self.gauges.get(name, (kind, help_text, per_model, []))
            series = [(lb, fn) for lb, fn in series if lb != (labels or {})] + [(dict(labels or {}), read)]
            self.gauges[name] = (kind, help_text, per_model, series)

    def families(self) -> list[Family]:
        """Every family, read now (gauge callbacks run outside the lock: they may take other locks)."""
        model = self._model_labels()
        with self._lock:
            slots = self._slots()
            current = dict(self.current.labels)
            out = _model_families(slots)
            registered = [
                (name, kind, help_text, per_model, list(series))
                for name, (kind, help_text, per_model, series) in self.gauges.items()
            ]
        for name, kind, help_text, per_model, series in registered:
            family = Family(name, kind, help_text)
            for labels, read in series:
                try:
                    family.add(float(read()), {**current, **labels} if per_model else labels)
                except Exception:  # a gauge must never break the scrape
                    continue
            out.append(family)
        out.append(_build_info())
        if model:
            out.append(
                Family(
                    "tandem_agent_model_info", "gauge", "Always 1; labels name the model and variant served now."
                ).add(1, model)
            )
        return out + process_families()

    def render(self, openmetrics: bool = False) -> str:
        """The /metrics page: Prometheus text 0.0.4, or OpenMetrics 1.0 when the scraper asks for it."""
        return render_families(self.families(), openmetrics=openmetrics)

    def _model_labels(self) -> dict[str, str]:
        if self.model_info is None:
            return {}
        try:
            name, version, variant = self.model_info()
        except Exception:  # mid-swap: scrape without the labels rather than fail
            return {}
        return {"model": name, "version": version, "variant": variant}


def _model_families(slots: Iterable[ModelMetrics]) -> list[Family]:
    """The per-model families, one series per variant served since start (caller holds the lock)."""
    requests = Family("tandem_agent_requests_total", "counter", "Requests answered, by where the answer came from.")
    errors = Family("tandem_agent_errors_total", "counter", "Error replies, by error code.")
    latency = Family("tandem_agent_request_seconds", "histogram", "Time inside the agent, receive to reply.")
    runtime = Family(
        "tandem_agent_runtime_seconds",
        "histogram",
        "Per request: handed to the runtime until its outputs (queue wait + batch run).",
    )
    fallback = Family("tandem_agent_fallback_seconds", "histogram", "Hub round trips, including failed ones.")
    fallback_total = Family("tandem_agent_fallback_total", "counter", "Requests sent to the hub.")
    ratio = Family("tandem_agent_fallback_ratio", "gauge", "Fraction of answered requests sent to the hub.")
    decisions = Family(
        "tandem_agent_mode_decisions_total",
        "counter",
        "Requests by the serving mode's decision (edge, cloud, shadow, budget-spent).",
    )
    shadow_samples = Family(
        "tandem_agent_shadow_samples_total", "counter", "Rows also answered by the hub in shadow mode."
    )
    shadow_agree = Family(
        "tandem_agent_shadow_agree_total", "counter", "Shadow rows whose edge top-1 class matched the hub's."
    )
    agreement = Family(
        "tandem_agent_shadow_agreement_ratio", "gauge", "Shadow agreement with the hub (0 before any sample)."
    )
    shadow_failures = Family(
        "tandem_agent_shadow_failures_total",
        "counter",
        "Shadow calls lost: the hub failed, or too many were in flight.",
    )
    for m in slots:
        lb = m.labels
        for s, n in sorted(m.requests.items()):
            requests.add(n, {**lb, "source": s})
        for c, n in sorted(m.errors.items()):
            errors.add(n, {**lb, "code": c})
        for s, h in sorted(m.latency.items()):
            if h.count:
                latency.histogram(h.buckets, h.counts, h.sum, {**lb, "source": s})
        runtime.histogram(m.runtime_latency.buckets, m.runtime_latency.counts, m.runtime_latency.sum, lb)
        fallback.histogram(m.fallback_latency.buckets, m.fallback_latency.counts, m.fallback_latency.sum, lb)
        fallback_total.add(m.fallback_attempts, lb)
        answered = m.answered()
        ratio.add(f"{(m.fallback_attempts / answered if answered else 0.0):.6f}", lb)
        for a, n in m.decisions.items():
            decisions.add(n, {**lb, "decision": str(getattr(a, "value", a))})
        shadow_samples.add(m.shadow_samples, lb)
        shadow_agree.add(m.shadow_agree, lb)
        agreement.add(f"{(m.shadow_agree / m.shadow_samples if m.shadow_samples else 0.0):.6f}", lb)
        shadow_failures.add(m.shadow_failed, {**lb, "why": "hub"}).add(m.shadow_skipped, {**lb, "why": "inflight"})
    return [
        requests,
        errors,
        latency,
        runtime,
        fallback,
        fallback_total,
        ratio,
        decisions,
        shadow_samples,
        shadow_agree,
        agreement,
        shadow_failures,
    ]


def _build_info() -> Family:
    versions = {"python": platform.python_version()}
    for dist, label in (("tandem", "version"), ("onnxruntime", "onnxruntime")):
        try:
            versions[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[label] = "none"
    return Family("tandem_agent_build_info", "gauge", "Always 1; labels carry the agent's versions.").add(1, versions)
