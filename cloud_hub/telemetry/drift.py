"""Drift statistics on binned counts: PSI, two-sample chi-square and Jensen-Shannon.

Pure functions of two count vectors (reference, current) over the same bins. Counts
are smoothed (add-alpha) so empty bins give finite values. Chi-square is the
two-sample homogeneity test, so the reference's own sampling noise (a few hundred
validation samples) is accounted for; its p-value gates PSI so small windows
cannot raise alerts on noise alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_ALPHA = 0.5
DEFAULT_MIN_REF_COUNT = 10.0


@dataclass(frozen=True)
class DriftStats:
    psi: float
    js: float  # Jensen-Shannon divergence, base 2, in [0, 1]
    chi2: float
    dof: int
    p_value: float
    n_ref: int
    n_cur: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "psi": round(self.psi, 6),
            "js": round(self.js, 6),
            "chi2": round(self.chi2, 4),
            "dof": self.dof,
            "p_value": self.p_value,
            "n_ref": self.n_ref,
            "n_cur": self.n_cur,
        }


def _as_counts(ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ref, dtype=np.float64).ravel()
    c = np.asarray(cur, dtype=np.float64).ravel()
    k = max(len(r), len(c))
    if len(r) < k:
        r = np.concatenate([r, np.zeros(k - len(r))])
    if len(c) < k:
        c = np.concatenate([c, np.zeros(k - len(c))])
    if (r < 0).any() or (c < 0).any() or not (np.isfinite(r).all() and np.isfinite(c).all()):
        raise ValueError("counts must be finite and non-negative")
    return r, c


def proportions(counts: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Add-alpha smoothed proportions (never zero, sum to one)."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + alpha) / (counts.sum() + alpha * len(counts))


def psi(ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray, alpha: float = DEFAULT_ALPHA) -> float:
    """Population stability index: sum (c - r) * ln(c / r); 0 for identical mixes."""
    r, c = _as_counts(ref, cur)
    if not len(r):
        return 0.0
    p, q = proportions(r, alpha), proportions(c, alpha)
    return float(np.sum((q - p) * np.log(q / p)))


def js_divergence(
    ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray, alpha: float = DEFAULT_ALPHA
) -> float:
    """Jensen-Shannon divergence (base 2): symmetric, bounded in [0, 1]."""
    r, c = _as_counts(ref, cur)
    if not len(r):
        return 0.0
    p, q = proportions(r, alpha), proportions(c, alpha)
    m = 0.5 * (p + q)
    value = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(min(1.0, max(0.0, value)))


def chi_square(ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray) -> tuple[float, int, float]:
    """Two-sample chi-square test of homogeneity over bins non-empty in either: (stat, dof, p)."""
    r, c = _as_counts(ref, cur)
    keep = (r + c) > 0
    r, c = r[keep], c[keep]
    n_r, n_c = r.sum(), c.sum()
    dof = int(len(r) - 1)
    if dof < 1 or n_r == 0 or n_c == 0:
        return 0.0, max(dof, 0), 1.0
    total = r + c
    e_r = total * n_r / (n_r + n_c)
    e_c = total * n_c / (n_r + n_c)
    stat = float(np.sum((r - e_r) ** 2 / e_r) + np.sum((c - e_c) ** 2 / e_c))
    return stat, dof, chi2_sf(stat, dof)


def chi2_sf(x: float, dof: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty; ~1e-3 relative, numpy only)."""
    if x <= 0 or dof < 1:
        return 1.0
    z = ((x / dof) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * dof))) / math.sqrt(2.0 / (9.0 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def merge_sparse(
    ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray, min_ref_count: float = DEFAULT_MIN_REF_COUNT
) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins until each holds >= min_ref_count reference samples.

    Sparse reference bins (a confident classifier puts almost all its confidence mass
    in the top one or two of 20 bins) make PSI and chi-square noisy and anti-
    conservative; grouping by the fixed reference keeps the grouping deterministic.
    """
    r, c = _as_counts(ref, cur)
    if not len(r) or r.sum() < 2 * min_ref_count:
        return r, c
    groups: list[int] = []
    acc = 0.0
    for i, v in enumerate(r):
        acc += v
        if acc >= min_ref_count:
            groups.append(i + 1)
            acc = 0.0
    if not groups or groups[-1] != len(r):
        if groups:
            groups[-1] = len(r)  # the short tail joins the last full group
        else:
            groups = [len(r)]
    starts = [0] + groups[:-1]
    return (
        np.array([r[a:b].sum() for a, b in zip(starts, groups)]),
        np.array([c[a:b].sum() for a, b in zip(starts, groups)]),
    )


def compare(
    ref: Sequence[float] | np.ndarray,
    cur: Sequence[float] | np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    min_ref_count: float = DEFAULT_MIN_REF_COUNT,
) -> DriftStats:
    """All three statistics for one (reference, current) pair, over bins merged by `merge_sparse`."""
    r, c = merge_sparse(ref, cur, min_ref_count) if min_ref_count > 0 else _as_counts(ref, cur)
    stat, dof, p = chi_square(r, c)
    return DriftStats(
        psi=psi(r, c, alpha),
        js=js_divergence(r, c, alpha),
        chi2=stat,
        dof=dof,
        p_value=p,
        n_ref=int(r.sum()),
        n_cur=int(c.sum()),
    )


def rate_rise(baseline_hits: int, baseline_total: int, hits: int, total: int) -> tuple[float, float]:
    """Current rate minus baseline rate, and the 2x2 chi-square p-value of the difference."""
    if baseline_total <= 0 or total <= 0:
        return 0.0, 1.0
    rise = hits / total - baseline_hits / baseline_total
    _, _, p = chi_square([baseline_hits, baseline_total - baseline_hits], [hits, total - hits])
    return rise, p
