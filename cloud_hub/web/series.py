"""Per-window chart points for a device: latency, fallback rate, confidence, input drift.

Pure: a decoded telemetry window and the model version's drift reference in, one JSON
point out. Input drift is each input summary's PSI against the reference, per window,
so the chart shows when a device's inputs moved (the drift engine alerts on cohorts).
Older than raw retention, a point is one of the device's minute rollup rows (`rollup_point`):
the same figures summed over the minute, without input PSI (per-device input histograms are
not kept; the cohort rollups hold them).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from tandem.cloud_hub.telemetry.drift import merge_sparse, psi
from tandem.protocols.telemetry_codec import LATENCY_EDGES_MS, TelemetryWindow

CONFIDENCE_BINS = 20
MIN_INPUT_SAMPLES = 10  # fewer samples than this in a window: its PSI is noise, left out


def input_reference(manifest: Mapping[str, Any] | None) -> dict[str, list[int]]:
    """'input.summary' -> reference counts, from a stored manifest dict (empty when it has none)."""
    ref = (manifest or {}).get("drift_reference") or {}
    return {
        f"{inp}.{summ}": list(spec.get("counts") or [])
        for inp, per in (ref.get("inputs") or {}).items()
        for summ, spec in (per or {}).items()
    }


def histogram_quantile(counts: Sequence[int], edges: Sequence[float], q: float) -> float | None:
    """The upper edge of the bin holding quantile `q` (open-ended last bin: its lower edge)."""
    total = sum(counts)
    if total <= 0:
        return None
    target, acc = q * total, 0
    for i, n in enumerate(counts):
        acc += n
        if acc >= target:
            return float(edges[min(i, len(edges) - 1)])
    return float(edges[-1])


def _confidence_mean(conf: Sequence[int]) -> float | None:
    n_conf = sum(conf)
    return (sum((i + 0.5) / CONFIDENCE_BINS * n for i, n in enumerate(conf)) / n_conf) if n_conf else None


def rollup_point(row: Mapping[str, Any], bucket_s: int) -> dict[str, Any]:
    """One per-device rollup row (RollupStore.device_rollups) as a chart point spanning its bucket."""
    total = row["edge"] + row["cloud"] + row["edge_degraded"] + row["error"]
    return {
        "sequence": None,
        "bucket_s": bucket_s,
        "start_unix": float(row["bucket"]),
        "end_unix": float(row["bucket"] + bucket_s),
        "model_name": row["model_name"],
        "model_version": row["model_version"],
        "requests": total,
        "latency_mean_ms": (row["latency_sum_ms"] / total) if total else None,
        "latency_p95_ms": histogram_quantile(row["latency_counts"], LATENCY_EDGES_MS, 0.95),
        "latency_max_ms": row["latency_max_ms"] if total else None,
        "fallback_rate": ((row["cloud"] + row["edge_degraded"]) / total) if total else None,
        "error_rate": (row["error"] / total) if total else None,
        "confidence_mean": _confidence_mean(row.get("confidence_counts") or []),
        "input_psi": {},
        "input_psi_max": None,
    }


def window_point(w: TelemetryWindow, reference: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    r = w.requests
    total = r.edge + r.cloud + r.edge_degraded + r.error
    confidence_mean = _confidence_mean(list(w.confidence_counts))
    drift: dict[str, float] = {}
    for s in w.inputs:
        key = f"{s.input}.{s.summary}"
        ref = reference.get(key)
        counts = np.asarray(s.counts, dtype=np.int64)
        if ref and counts.sum() >= MIN_INPUT_SAMPLES:
            drift[key] = round(psi(*merge_sparse(ref, counts)), 4)  # the bins the drift engine compares
    return {
        "sequence": w.sequence,
        "start_unix": w.start_unix,
        "end_unix": w.end_unix,
        "model_name": w.model_name,
        "model_version": w.model_version,
        "requests": total,
        "latency_mean_ms": (w.latency_sum_ms / total) if total else None,
        "latency_p95_ms": histogram_quantile(list(w.latency_counts), LATENCY_EDGES_MS, 0.95),
        "latency_max_ms": w.latency_max_ms if total else None,
        "fallback_rate": ((r.cloud + r.edge_degraded) / total) if total else None,
        "error_rate": (r.error / total) if total else None,
        "confidence_mean": confidence_mean,
        "input_psi": drift,
        "input_psi_max": max(drift.values()) if drift else None,
    }
