"""The policy's one-row fast path answers exactly what the general numpy path answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.edge_agent import policy as policy_module
from tandem.edge_agent.policy import KINDS, ConfidencePolicy, Scores

FLOATS = st.floats(-30.0, 30.0, allow_nan=False, width=32)


def _softmax_row(logits: list[float]) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32).reshape(1, -1)


@st.composite
def rows(draw: st.DrawFn) -> np.ndarray:
    """One row as a model answers it: float probabilities, 8-bit ones, logits, or edge cases (ties, zeros)."""
    k = draw(st.integers(2, 40))
    how = draw(st.sampled_from(["probs", "quantized", "logits", "ties", "onehot", "near-cut"]))
    logits = draw(st.lists(FLOATS, min_size=k, max_size=k))
    if how == "logits":
        return np.asarray(logits, np.float32).reshape(1, -1)
    probs = _softmax_row(logits)
    if how == "quantized":
        return np.minimum(np.round(probs * 256.0) / 256.0, 255.0 / 256.0).astype(np.float32)
    if how == "ties":
        return np.full((1, k), 1.0 / k, np.float32)
    if how == "onehot":
        row = np.zeros((1, k), np.float32)
        row[0, draw(st.integers(0, k - 1))] = 1.0
        return row
    if how == "near-cut":  # sums right at the 'auto' cut-offs between pass-through, renormalize and softmax
        return (probs * np.float32(draw(st.sampled_from([1.001, 0.999, 1.00099, 1.00101, 1.05, 0.95])))).astype(
            np.float32
        )
    return probs


def _same(fast: Scores, general: Scores) -> None:
    for name in ("labels", "confidence", "confident"):
        a, b = getattr(fast, name), getattr(general, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert fast.threshold == general.threshold
    assert (fast.calibrated is None) == (general.calibrated is None)
    if general.calibrated is not None:
        np.testing.assert_array_equal(fast.calibrated, general.calibrated)
        assert fast.calibrated.dtype == general.calibrated.dtype


@settings(max_examples=400, deadline=None)
@given(
    row=rows(),
    kind=st.sampled_from(KINDS),
    temperature=st.sampled_from([None, 0.5, 1.7]),
    threshold=st.one_of(st.none(), st.floats(0.0, 1.0)),
    override=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_fast_path_matches_general_path(
    row: np.ndarray, kind: str, temperature: float | None, threshold: float | None, override: float | None
) -> None:
    policy = ConfidencePolicy(kind, threshold, temperature=temperature)
    t = policy.threshold if override is None else override
    general = policy.score_array(row.astype(np.float64), override)  # float64: not the fast path's input
    fast = policy._score_one_row(row, t)
    if fast is not None:
        _same(fast, general)
    _same(policy.score_array(row, override), general)


def test_fast_path_takes_the_common_rows() -> None:
    """The fast path must actually run for float and 8-bit probabilities and logits (else the test above is empty)."""
    rng = np.random.default_rng(0)
    probs = _softmax_row(rng.normal(size=10).tolist())
    quantized = (np.round(probs * 256.0) / 256.0).astype(np.float32)
    logits = rng.normal(size=(1, 10)).astype(np.float32)
    for kind in KINDS:
        policy = ConfidencePolicy(kind, temperature=1.5)
        for row in (probs, quantized, logits):
            assert policy._score_one_row(row, 0.5) is not None


def test_threshold_override_is_rounded_like_numpy() -> None:
    """0.7 as float32 lies below 0.7, so numpy calls a float32 0.7 confident at threshold 0.7; so must the fast path."""
    row = np.array([[0.7, 0.3]], np.float32)
    policy = ConfidencePolicy("max_prob", 0.9)
    assert bool(policy.score_array(row, 0.7).confident[0])
    assert not bool(policy.score_array(row).confident[0])
    assert bool(policy.score_array(row, 0.7).confident[0])


def test_nan_and_inf_rows_fall_back_to_the_general_path() -> None:
    policy = ConfidencePolicy("max_prob")
    for bad in (np.array([[np.nan, 0.5]], np.float32), np.array([[np.inf, 0.0]], np.float32)):
        assert policy._score_one_row(bad, 0.5) is None
        scores = policy.score_array(bad)
        assert not scores.all_confident


@pytest.mark.parametrize("tolerance", [1e-3, 0.02])
def test_both_paths_read_the_auto_cut_offs_from_one_rule(monkeypatch: pytest.MonkeyPatch, tolerance: float) -> None:
    """Move the probability-sum cut-off and both paths move with it: the fast path keeps no copy of `_auto`'s
    cut-offs (one that did answered renormalized probabilities where the general path passed them through)."""
    monkeypatch.setattr(policy_module, "PROBABILITY_SUM_TOLERANCE", tolerance)
    policy = ConfidencePolicy("max_prob")
    base = _softmax_row([2.0, 1.0, 0.5, 0.1])
    for factor in (1.0005, 1.005, 1.015, 1.04):  # sums on both sides of each cut-off
        row = (base * np.float32(factor)).astype(np.float32)
        fast = policy._score_one_row(row, 0.5)
        general = policy.score_array(row.astype(np.float64), 0.5)
        assert fast is not None, factor
        _same(fast, general)
        passed_through = general.confidence[0] == row.max()  # not renormalized: read as probabilities
        assert passed_through == (factor - 1.0 <= tolerance), factor
