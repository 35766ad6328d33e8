"""ML quality of a wave against its control cohort: pure figures from telemetry windows, and the verdict.

The control cohort stays on the current version for the whole rollout, so it sees the
same hours, traffic and input drift as the wave; comparing the two over the same span
separates "the new model is worse" from "the world changed". Figures come from the
telemetry the hub already stores, summed per device and model version (the per-device
rollups, which outlive raw windows, plus the raw windows not rolled up yet:
telemetry/rollup_store.py `device_sums`): request sources (fallback and error rates), the
confidence histogram and the predicted-class mix (PSI over the binned counts, as the
drift engine computes it), and agreement with the cloud model from the shadow samples
that devices in shadow mode report (edge_agent/modes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np

from tandem.cloud_hub.telemetry.drift import compare
from tandem.cloud_hub.telemetry.rollups import DeviceSum, device_sums
from tandem.protocols.drift import CONFIDENCE_EDGES
from tandem.protocols.telemetry_codec import TelemetryDecodeError, TelemetryWindow, decode_window

Verdict = Literal["wait", "pass", "halt"]
# Bin centres of the confidence histogram (20 bins over [0, 1]), for the mean confidence.
_CENTRES = np.array([(lo + hi) / 2 for lo, hi in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:])])


@dataclass(frozen=True)
class CohortFigures:
    """Summed counts of one cohort's windows over a span."""

    devices: int = 0
    windows: int = 0
    requests: int = 0
    fallbacks: int = 0  # answered by the hub, or wanted it and got the degraded local answer
    errors: int = 0
    confidence: tuple[int, ...] = field(default_factory=lambda: (0,) * 20)
    classes: tuple[int, ...] = ()
    shadow_samples: int = 0  # rows also answered by the hub (shadow mode)
    shadow_agree: int = 0  # of those, rows whose edge top-1 class matched the hub's
    budget_spent: int = 0  # degraded answers because a device's fallback budget was spent

    @property
    def agreement(self) -> float | None:
        return self.shadow_agree / self.shadow_samples if self.shadow_samples else None

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_confidence(self) -> float | None:
        n = sum(self.confidence)
        return float(np.dot(self.confidence, _CENTRES[: len(self.confidence)]) / n) if n else None

    def as_dict(self) -> dict[str, Any]:
        mean, agreement = self.mean_confidence, self.agreement
        return {
            "devices": self.devices,
            "windows": self.windows,
            "requests": self.requests,
            "fallback_rate": round(self.fallback_rate, 4),
            "error_rate": round(self.error_rate, 4),
            "mean_confidence": None if mean is None else round(mean, 4),
            "shadow_samples": self.shadow_samples,
            "agreement": None if agreement is None else round(agreement, 4),
            "budget_spent": self.budget_spent,
        }


def figures(windows: Iterable[TelemetryWindow]) -> CohortFigures:
    """Sum decoded windows into one cohort's figures."""
    return figures_of(device_sums(windows))


def figures_of(sums: Iterable[DeviceSum]) -> CohortFigures:
    """Sum per-device sums (rollup rows, raw windows summed) into one cohort's figures. A device's confidence
    histogram counts only at the protocol's 20 bins (its sums then add 20-bin windows only)."""
    devices: set[str] = set()
    n = requests = fallbacks = errors = shadow_samples = shadow_agree = budget_spent = 0
    conf = np.zeros(20, dtype=np.int64)
    classes = np.zeros(0, dtype=np.int64)
    for device, _, r in sums:
        devices.add(device)
        n += r.windows
        requests += r.edge + r.cloud + r.edge_degraded + r.error
        fallbacks += r.cloud + r.edge_degraded
        errors += r.error
        shadow_samples += r.shadow_samples
        shadow_agree += r.shadow_agree
        budget_spent += r.budget_spent
        if len(r.confidence) == 20:
            conf += r.confidence
        if len(r.classes):
            if len(r.classes) > len(classes):
                classes = np.concatenate([classes, np.zeros(len(r.classes) - len(classes), dtype=np.int64)])
            classes[: len(r.classes)] += r.classes
    return CohortFigures(
        len(devices),
        n,
        requests,
        fallbacks,
        errors,
        tuple(conf.tolist()),
        tuple(classes.tolist()),
        shadow_samples,
        shadow_agree,
        budget_spent,
    )


@dataclass(frozen=True)
class QualityQuery:
    """What the shell must fetch: windows of these devices that ended after `since`."""

    wave_devices: tuple[str, ...]  # opened, committed, not control: judged on `version` windows only
    control_devices: tuple[str, ...]  # judged on windows of any other version
    version: str
    since: float


@dataclass(frozen=True)
class Comparison:
    """The wave's and the control cohort's figures over the same span."""

    wave: CohortFigures
    control: CohortFigures
    since: float
    until: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "wave": self.wave.as_dict(),
            "control": self.control.as_dict(),
            "since": self.since,
            "until": self.until,
            **{k: round(v, 4) for k, v in shifts(self).items()},
        }


def compare_cohorts(
    q: QualityQuery, wave_payloads: Iterable[bytes], control_payloads: Iterable[bytes], until: float
) -> Comparison:
    """Stored window payloads -> the comparison: the wave on the new version only, the control on any other."""
    return compare_sums(q, device_sums(_decode(wave_payloads)), device_sums(_decode(control_payloads)), until)


def compare_sums(
    q: QualityQuery, wave_sums: Iterable[DeviceSum], control_sums: Iterable[DeviceSum], until: float
) -> Comparison:
    """Per-device sums -> the comparison: the wave on the new version only, the control on any other."""
    wave = [s for s in wave_sums if s.model_version == q.version]
    control = [s for s in control_sums if s.model_version != q.version]
    return Comparison(figures_of(wave), figures_of(control), q.since, until)


def _decode(payloads: Iterable[bytes]) -> Iterable[TelemetryWindow]:
    for payload in payloads:
        try:
            yield decode_window(payload)
        except TelemetryDecodeError:  # stored windows were validated on ingest; a newer schema is skipped
            continue


def shifts(c: Comparison) -> dict[str, float]:
    """PSI of the wave's confidence and class mix against the control's (0 when either is empty)."""
    out = {}
    for name, a, b in (
        ("confidence_psi", c.control.confidence, c.wave.confidence),
        ("class_psi", c.control.classes, c.wave.classes),
    ):
        out[name] = compare(a, b).psi if sum(a) and sum(b) else 0.0
    return out


def verdict(c: Comparison | None, gates: Any) -> tuple[Verdict, str]:
    """('wait', why) until both cohorts have `min_quality_requests`; then ('halt', the gate and figures) or ('pass', '')."""
    need = gates.min_quality_requests
    if c is None:
        return "wait", "no quality figures yet"
    if c.wave.requests < need or c.control.requests < need:
        return "wait", (
            f"quality figures: wave {c.wave.requests} requests, control {c.control.requests}, need {need} each"
        )
    w, k = c.wave, c.control
    if w.fallback_rate - k.fallback_rate > gates.max_fallback_rise_vs_control:
        return "halt", (
            f"fallback rate {w.fallback_rate:.2f} vs control {k.fallback_rate:.2f} "
            f"(max rise {gates.max_fallback_rise_vs_control:.2f})"
        )
    if w.error_rate - k.error_rate > gates.max_error_rise_vs_control:
        return "halt", (
            f"error rate {w.error_rate:.2f} vs control {k.error_rate:.2f} "
            f"(max rise {gates.max_error_rise_vs_control:.2f})"
        )
    wm, km = w.mean_confidence, k.mean_confidence
    if wm is not None and km is not None and km - wm > gates.max_confidence_drop_vs_control:
        return "halt", (
            f"mean confidence {wm:.2f} vs control {km:.2f} (max drop {gates.max_confidence_drop_vs_control:.2f})"
        )
    halt = _agreement_gate(w, k, gates)
    if halt:
        return "halt", halt
    s = shifts(c)
    if gates.max_confidence_psi_vs_control is not None and s["confidence_psi"] > gates.max_confidence_psi_vs_control:
        return "halt", (
            f"confidence distribution PSI {s['confidence_psi']:.2f} vs control "
            f"(max {gates.max_confidence_psi_vs_control:.2f})"
        )
    if gates.max_class_psi_vs_control is not None and s["class_psi"] > gates.max_class_psi_vs_control:
        return "halt", f"class mix PSI {s['class_psi']:.2f} vs control (max {gates.max_class_psi_vs_control:.2f})"
    return "pass", ""


def _agreement_gate(w: CohortFigures, k: CohortFigures, gates: Any) -> str:
    """The halt reason when the wave agrees with the cloud model less than the control does; '' otherwise.

    Skipped (passes) while either cohort has fewer than `min_shadow_samples`: most fleets
    shadow only a few devices, and a handful of samples says nothing.
    """
    limit = getattr(gates, "max_agreement_drop_vs_control", None)
    need = getattr(gates, "min_shadow_samples", 1)
    if limit is None or w.shadow_samples < need or k.shadow_samples < need:
        return ""
    wa, ka = w.agreement, k.agreement
    if wa is None or ka is None or ka - wa <= limit:
        return ""
    return (
        f"shadow agreement with the cloud model {wa:.2f} vs control {ka:.2f} (max drop {limit:.2f}; "
        f"{w.shadow_samples} wave and {k.shadow_samples} control shadow samples)"
    )
