"""Pure window aggregation: answered requests in, one TelemetryWindow message out.

Only counts leave the device: per-sample input summaries binned over the manifest's
drift reference edges, confidences over CONFIDENCE_EDGES, predicted-class counts,
latencies over LATENCY_EDGES_MS. Time is passed in, so tests and the simulator
drive it without sleeping.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from protocols import limits
from protocols.drift import bin_counts, confidence_counts, summarize_inputs
from protocols.telemetry_codec import LATENCY_EDGES_MS, SOURCE_FIELDS, TelemetryWindow


@dataclass(frozen=True)
class WindowConfig:
    """When a window closes, and how much of each request is summarized."""

    window_s: float = 10.0
    max_requests: int = 10_000      # a busy device closes early so one window stays small
    input_every: int = 1            # summarize the inputs of every Nth request (big images cost CPU)
    emit_empty: bool = False        # idle devices send nothing; liveness is on /status

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"window_s: must be > 0, got {self.window_s}")
        if self.max_requests < 1:
            raise ValueError(f"max_requests: must be >= 1, got {self.max_requests}")
        if self.input_every < 1:
            raise ValueError(f"input_every: must be >= 1, got {self.input_every}")


@dataclass(frozen=True)
class ModelInfo:
    """What the window says about the model it describes; edges come from the manifest."""

    name: str
    version: str
    drift_reference: Mapping[str, Any] = field(default_factory=dict)
    variant: str = ""

    @classmethod
    def from_manifest(cls, manifest: Any, variant: str = "") -> "ModelInfo":
        return cls(manifest.name, manifest.version, dict(manifest.drift_reference or {}), variant)


class WindowAggregator:
    """Accumulates one open window at a time; not thread-safe (the service locks)."""

    def __init__(self, device_id: str, model: ModelInfo, *, profile: str = "", tags: Mapping[str, str] | None = None,
                 config: WindowConfig = WindowConfig(), now: float = 0.0) -> None:
        self.device_id = device_id
        self.model = model
        self.profile = profile
        self.tags = dict(tags or {})
        self.config = config
        ref_inputs = dict(model.drift_reference.get("inputs", {}) or {})
        self._edges: dict[tuple[str, str], list[float]] = {
            (inp, summ): list(spec["edges"]) for inp, per in ref_inputs.items() for summ, spec in per.items()
        }
        self._input_names = sorted({inp for inp, _ in self._edges})
        ref_classes = (model.drift_reference.get("classes") or {}).get("counts") or []
        self._num_classes = min(len(ref_classes), limits.MAX_TELEMETRY_CLASSES)
        self._reset(now)

    def _reset(self, now: float) -> None:
        self.start = now
        self._requests = {f: 0 for f in SOURCE_FIELDS.values()}
        self._n = 0
        self._samples = 0
        self._input_samples = 0
        self._latency = np.zeros(len(LATENCY_EDGES_MS) + 1, dtype=np.int64)
        self._latency_sum = 0.0
        self._latency_max = 0.0
        self._confidence = np.zeros(20, dtype=np.int64)
        self._classes = np.zeros(self._num_classes, dtype=np.int64)
        self._class_overflow = 0
        self._inputs = {key: np.zeros(len(edges) + 1, dtype=np.int64) for key, edges in self._edges.items()}

    @property
    def requests(self) -> int:
        return self._n

    def record(self, source: str, latency_ms: float, confidence: float | Sequence[float] | np.ndarray | None = None,
               label: int | Sequence[int] | np.ndarray | None = None,
               inputs: Mapping[str, np.ndarray] | np.ndarray | None = None) -> bool:
        """Count one answered request; True when it filled the window (close it now)."""
        field_name = SOURCE_FIELDS.get(source)
        if field_name is None:
            raise ValueError(f"source: {source!r} is not one of {', '.join(SOURCE_FIELDS)}")
        self._requests[field_name] += 1
        self._n += 1
        lat = float(latency_ms) if np.isfinite(latency_ms) and latency_ms >= 0 else 0.0
        self._latency[bisect.bisect_right(LATENCY_EDGES_MS, lat)] += 1
        self._latency_sum += lat
        self._latency_max = max(self._latency_max, lat)
        rows = 0
        if confidence is not None:
            conf = np.atleast_1d(np.asarray(confidence, dtype=np.float64))
            rows = len(conf)
            conf = conf[np.isfinite(conf)]
            if len(conf):
                self._confidence += np.asarray(confidence_counts(conf), dtype=np.int64)
        if label is not None:
            self._add_labels(np.atleast_1d(np.asarray(label)).astype(np.int64, copy=False))
            rows = max(rows, int(np.size(label)))
        if inputs is not None and (self._n - 1) % self.config.input_every == 0:
            rows = max(rows, self._add_inputs(inputs))
        self._samples += max(rows, 1)
        return self._n >= self.config.max_requests

    def _add_labels(self, labels: np.ndarray) -> None:
        ok = (labels >= 0) & (labels < limits.MAX_TELEMETRY_CLASSES)
        self._class_overflow += int((~ok).sum())
        labels = labels[ok]
        if not len(labels):
            return
        top = int(labels.max()) + 1
        if top > len(self._classes):
            self._classes = np.concatenate([self._classes, np.zeros(top - len(self._classes), dtype=np.int64)])
        self._classes += np.bincount(labels, minlength=len(self._classes))

    def _add_inputs(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> int:
        if not isinstance(inputs, Mapping):
            if len(self._input_names) != 1:
                return 0  # ambiguous without names; the agent passes a mapping for multi-input models
            inputs = {self._input_names[0]: inputs}
        rows = 0
        for name, arr in inputs.items():
            if name not in self._input_names:
                continue
            arr = np.asarray(arr)
            if arr.ndim == 0 or len(arr) == 0:
                continue
            summaries = summarize_inputs(arr)
            rows = max(rows, len(arr))
            for summ, values in summaries.items():
                key = (name, summ)
                if key in self._inputs:
                    values = values[np.isfinite(values)]
                    self._inputs[key] += np.asarray(bin_counts(values, self._edges[key]), dtype=np.int64)
        self._input_samples += rows
        return rows

    def due(self, now: float) -> bool:
        """The open window has lasted window_s (whether or not it holds requests)."""
        return now - self.start >= self.config.window_s

    def close(self, now: float) -> TelemetryWindow | None:
        """End the open window and start the next; None when it was empty (unless emit_empty)."""
        if self._n == 0 and not self.config.emit_empty:
            self._reset(now)
            return None
        w = TelemetryWindow(
            schema_version=limits.TELEMETRY_SCHEMA_VERSION, device_id=self.device_id, model_name=self.model.name,
            model_version=self.model.version, variant=self.model.variant, profile=self.profile,
            start_unix=self.start, end_unix=max(now, self.start), samples=self._samples,
            latency_sum_ms=self._latency_sum, latency_max_ms=self._latency_max, class_overflow=self._class_overflow,
            input_samples=self._input_samples,
        )
        w.tags.update(self.tags)
        for f, n in self._requests.items():
            setattr(w.requests, f, n)
        w.latency_counts.extend(self._latency.tolist())
        w.confidence_counts.extend(self._confidence.tolist())
        w.class_counts.extend(self._classes.tolist())
        for (inp, summ), counts in sorted(self._inputs.items()):
            w.inputs.add(input=inp, summary=summ, counts=counts.tolist())
        self._reset(now)
        return w
