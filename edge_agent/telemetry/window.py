"""Pure window aggregation: answered requests in, one TelemetryWindow message out.

Only counts leave the device: per-sample input summaries binned over the manifest's
drift reference edges, confidences over CONFIDENCE_EDGES, predicted-class counts,
latencies over LATENCY_EDGES_MS. Time is passed in, so tests and the simulator
drive it without sleeping.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from tandem.protocols import limits
from tandem.protocols.drift import (
    TASK_SIGNAL_EDGES,
    bin_counts,
    confidence_counts,
    summarize_inputs,
    task_signal_counts,
)
from tandem.protocols.telemetry_codec import LATENCY_EDGES_MS, SOURCE_FIELDS, TelemetryWindow

FOLD_SAMPLES = 4096  # buffered values before they are binned; bounds memory on a busy device
RAW_BUFFER_BYTES = 4 * 1024 * 1024  # small input rows kept (in memory only) until summarized in bulk


@dataclass(frozen=True)
class WindowConfig:
    """When a window closes, and how much of each request is summarized."""

    window_s: float = 10.0
    max_requests: int = 10_000  # a busy device closes early so one window stays small
    input_every: int = 1  # summarize the inputs of every Nth request (big images cost CPU)
    emit_empty: bool = False  # idle devices send nothing; liveness is on /status

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

    def __init__(
        self,
        device_id: str,
        model: ModelInfo,
        *,
        profile: str = "",
        tags: Mapping[str, str] | None = None,
        config: WindowConfig = WindowConfig(),
        now: float = 0.0,
    ) -> None:
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
        self._conf_buf: list = []
        self._label_buf: list = []
        self._pending: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in self._edges}
        self._pending_rows = 0
        self._raw: list[tuple[str, np.ndarray]] = []
        self._raw_bytes = 0
        self._shadow_samples = 0
        self._shadow_agree = 0
        self._budget_spent = 0
        self._task_buf: dict[str, list[np.ndarray]] = {}
        self._task_values = 0
        self._tasks: dict[str, np.ndarray] = {}
        self._agreement = np.zeros(20, dtype=np.int64)
        self._agreement_sum = 0.0

    @property
    def requests(self) -> int:
        return self._n

    def record(
        self,
        source: str,
        latency_ms: float,
        confidence: float | Sequence[float] | np.ndarray | None = None,
        label: int | Sequence[int] | np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | np.ndarray | None = None,
        budget_spent: bool = False,
        signals: Mapping[str, np.ndarray] | None = None,
    ) -> bool:
        """Count one answered request; True when it filled the window (close it now).

        `budget_spent`: an edge-degraded answer given because the fallback budget was spent.
        `signals`: task drift signals (tandem.tasks TaskConfidence.signals); names outside
        protocols.drift.TASK_SIGNAL_EDGES are ignored.
        """
        field_name = SOURCE_FIELDS.get(source)
        if field_name is None:
            raise ValueError(f"source: {source!r} is not one of {', '.join(SOURCE_FIELDS)}")
        if budget_spent:
            if field_name != "edge_degraded":
                raise ValueError(f"budget_spent: only an edge-degraded answer can be budget-spent, not {source!r}")
            self._budget_spent += 1
        self._requests[field_name] += 1
        self._n += 1
        lat = float(latency_ms)
        if not 0.0 <= lat < math.inf:  # NaN, negative or infinite: counted as 0 ms, never poisons the sums
            lat = 0.0
        self._latency[bisect.bisect_right(LATENCY_EDGES_MS, lat)] += 1
        self._latency_sum += lat
        self._latency_max = max(self._latency_max, lat)
        rows = 0
        # Values are buffered and binned in bulk (_fold): one vectorized pass per few thousand
        # samples instead of ~30 small numpy calls on every request's hot path.
        if confidence is not None:
            conf = confidence.tolist() if isinstance(confidence, np.ndarray) else confidence
            if isinstance(conf, (list, tuple)):
                self._conf_buf.extend(conf)
                rows = len(conf)
            else:
                self._conf_buf.append(conf)
                rows = 1
        if label is not None:
            lab = label.tolist() if isinstance(label, np.ndarray) else label
            if isinstance(lab, (list, tuple)):
                self._label_buf.extend(lab)
                rows = max(rows, len(lab))
            else:
                self._label_buf.append(lab)
                rows = max(rows, 1)
        if signals:
            for name, values in signals.items():
                if name in TASK_SIGNAL_EDGES:
                    arr = np.asarray(values, dtype=np.float64).ravel()
                    self._task_buf.setdefault(name, []).append(arr)
                    self._task_values += arr.size
        if inputs is not None and (self._n - 1) % self.config.input_every == 0:
            rows = max(rows, self._add_inputs(inputs))
        self._samples += max(rows, 1)
        if len(self._conf_buf) + len(self._label_buf) + self._pending_rows + self._task_values >= FOLD_SAMPLES:
            self._fold()
        return self._n >= self.config.max_requests

    def record_shadow(self, samples: int, agree: int) -> None:
        """A shadow comparison came back: `samples` rows, `agree` of them with the hub's top-1 class."""
        if not 0 <= agree <= samples:
            raise ValueError(f"shadow: agree={agree} must be between 0 and samples={samples}")
        self._shadow_samples += samples
        self._shadow_agree += agree

    def record_agreement(self, values: np.ndarray) -> None:
        """Rows the hub answered: the edge's agreement with it per row, in [0, 1] (tandem.tasks.row_agreement)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = np.clip(v[np.isfinite(v)], 0.0, 1.0)
        if len(v):
            self._agreement += np.asarray(confidence_counts(v), dtype=np.int64)
            self._agreement_sum += float(v.sum())

    def _fold(self) -> None:
        """Bin the buffered confidences, labels and input summaries into the window's counts."""
        if self._raw:
            self._summarize_raw()
        if self._conf_buf:
            conf = np.asarray(self._conf_buf, dtype=np.float64).ravel()
            conf = conf[np.isfinite(conf)]
            if len(conf):
                self._confidence += np.asarray(confidence_counts(conf), dtype=np.int64)
            self._conf_buf = []
        if self._label_buf:
            self._add_labels(np.asarray(self._label_buf, dtype=np.int64).ravel())
            self._label_buf = []
        for key, chunks in self._pending.items():
            if chunks:
                values = np.concatenate(chunks)
                values = values[np.isfinite(values)]
                self._inputs[key] += np.asarray(bin_counts(values, self._edges[key]), dtype=np.int64)
                chunks.clear()
        self._pending_rows = 0
        for name, parts in self._task_buf.items():
            if parts:
                counts = np.asarray(task_signal_counts(name, np.concatenate(parts)), dtype=np.int64)
                self._tasks[name] = self._tasks[name] + counts if name in self._tasks else counts
                parts.clear()
        self._task_values = 0

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
            rows = max(rows, len(arr))
            if arr.nbytes <= RAW_BUFFER_BYTES // 64:
                # small rows: keep a copy (the caller's buffer may be a reused network frame) and
                # summarize them all at once in _fold; a few microseconds instead of ~35
                self._raw.append((name, np.array(arr)))
                self._raw_bytes += arr.nbytes
            else:
                self._add_summaries(name, arr)
        self._input_samples += rows
        self._pending_rows += rows
        if self._raw_bytes >= RAW_BUFFER_BYTES:
            self._fold()
        return rows

    def _add_summaries(self, name: str, arr: np.ndarray) -> None:
        for summ, values in summarize_inputs(arr).items():
            chunks = self._pending.get((name, summ))
            if chunks is not None:
                chunks.append(values)

    def _summarize_raw(self) -> None:
        groups: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
        for name, arr in self._raw:
            groups.setdefault((name, arr.shape[1:]), []).append(arr)
        for (name, _), arrays in groups.items():
            self._add_summaries(name, np.concatenate(arrays))
        self._raw = []
        self._raw_bytes = 0

    def due(self, now: float) -> bool:
        """The open window has lasted window_s (whether or not it holds requests), or the clock went back.

        A wall clock stepped back (NTP, an RTC reset) would otherwise hold the window open for as
        long as it went back: an hour back, an hour of silence. Closing it at once costs one short
        window (end_unix is clamped to start_unix); the next is timed from the new clock."""
        elapsed = now - self.start
        return elapsed >= self.config.window_s or elapsed < 0

    def close(self, now: float) -> TelemetryWindow | None:
        """End the open window and start the next; None when it was empty (unless emit_empty)."""
        if self._n == 0 and self._shadow_samples == 0 and not self.config.emit_empty:
            self._reset(now)
            return None
        self._fold()
        w = TelemetryWindow(
            schema_version=limits.TELEMETRY_SCHEMA_VERSION,
            device_id=self.device_id,
            model_name=self.model.name,
            model_version=self.model.version,
            variant=self.model.variant,
            profile=self.profile,
            start_unix=self.start,
            end_unix=max(now, self.start),
            samples=self._samples,
            latency_sum_ms=self._latency_sum,
            latency_max_ms=self._latency_max,
            class_overflow=self._class_overflow,
            input_samples=self._input_samples,
            shadow_samples=self._shadow_samples,
            shadow_agree=self._shadow_agree,
            budget_spent=self._budget_spent,
        )
        w.tags.update(self.tags)
        for f, n in self._requests.items():
            setattr(w.requests, f, n)
        w.latency_counts.extend(self._latency.tolist())
        w.confidence_counts.extend(self._confidence.tolist())
        w.class_counts.extend(self._classes.tolist())
        for (inp, summ), counts in sorted(self._inputs.items()):
            w.inputs.add(input=inp, summary=summ, counts=counts.tolist())
        for name, counts in sorted(self._tasks.items()):
            w.task_signals.add(signal=name, counts=counts.tolist())
        if self._agreement.any():
            w.agreement_counts.extend(self._agreement.tolist())
            w.agreement_sum = min(self._agreement_sum, float(self._agreement.sum()))
        self._reset(now)
        return w
