"""Per-window chart points for a device: latency, fallback rate, confidence, input drift.

Pure: a decoded telemetry window and the model version's drift reference in, one JSON
point out. Input drift is each input summary's PSI against the reference, per window,
so the chart shows when a device's inputs moved (the drift engine alerts on cohorts).
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


def window_point(w: TelemetryWindow, reference: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    r = w.requests
    total = r.edge + r.cloud + r.edge_degraded + r.error
    conf = list(w.confidence_counts)
    n_conf = sum(conf)
    confidence_mean = (sum((i + 0.5) / CONFIDENCE_BINS * n for i, n in enumerate(conf)) / n_conf) if n_conf else None
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
