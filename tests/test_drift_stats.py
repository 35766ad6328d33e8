"""Property tests for the pure drift statistics and the alert hysteresis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.cloud_hub.telemetry.alerts import AlertState, Hysteresis, step
from tandem.cloud_hub.telemetry.drift import chi2_sf, chi_square, compare, js_divergence, merge_sparse, psi, rate_rise

counts = st.lists(st.integers(0, 10_000), min_size=2, max_size=30)


@st.composite
def count_pairs(draw):
    ref = draw(counts)
    cur = draw(st.lists(st.integers(0, 10_000), min_size=len(ref), max_size=len(ref)))
    return ref, cur


@given(count_pairs())
def test_statistics_are_bounded_and_symmetric_where_they_should_be(pair):
    ref, cur = pair
    assert psi(ref, cur) >= -1e-12
    assert psi(ref, cur) == pytest.approx(psi(cur, ref), rel=1e-9, abs=1e-12)  # PSI is symmetric in p, q
    js = js_divergence(ref, cur)
    assert 0.0 <= js <= 1.0
    assert js == pytest.approx(js_divergence(cur, ref), abs=1e-12)
    stat, dof, p = chi_square(ref, cur)
    assert stat >= 0 and 0.0 <= p <= 1.0 and dof >= 0


@given(counts, st.integers(2, 50))
def test_identical_mixes_show_no_drift_at_any_scale(ref, scale):
    scaled = [c * scale for c in ref]
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(ref, ref) == pytest.approx(0.0, abs=1e-12)
    # Same proportions, more samples: chi-square homogeneity stays at 0.
    assert chi_square(ref, scaled)[0] == pytest.approx(0.0, abs=1e-6)


@given(count_pairs(), st.floats(1, 50))
def test_merge_sparse_keeps_totals_and_gives_full_reference_bins(pair, min_count):
    ref, cur = pair
    r, c = merge_sparse(ref, cur, min_count)
    assert r.sum() == sum(ref) and c.sum() == sum(cur)
    if sum(ref) >= 2 * min_count:
        assert (r >= min_count).all()


def test_a_shift_of_mass_raises_psi_js_and_significance_monotonically():
    ref = np.array([100, 100, 100, 100])
    previous = (0.0, 0.0, 1.0)
    for moved in (5, 20, 50, 90):
        cur = np.array([100 + moved, 100, 100, 100 - moved])
        s = compare(ref, cur)
        assert s.psi > previous[0] and s.js > previous[1] and s.p_value < previous[2]
        previous = (s.psi, s.js, s.p_value)
    assert previous[0] > 0.25 and previous[2] < 1e-6


@pytest.mark.parametrize(
    "x,dof,expected", [(3.841, 1, 0.05), (18.307, 10, 0.05), (23.209, 10, 0.01), (10.0, 10, 0.4405)]
)
def test_chi2_upper_tail_matches_tables(x, dof, expected):
    assert chi2_sf(x, dof) == pytest.approx(expected, rel=0.08)


def test_rate_rise_sign_and_significance():
    rise, p = rate_rise(50, 1000, 200, 1000)
    assert rise == pytest.approx(0.15) and p < 1e-6
    rise, p = rate_rise(50, 1000, 52, 1000)
    assert abs(rise) < 0.01 and p > 0.5


RULE = Hysteresis(open_above=0.25, close_below=0.1, k_open=3, k_close=2)


def run(values, significant=True):
    state, transitions = AlertState(), []
    for v in values:
        state, t = step(state, v, RULE, significant)
        transitions.append(t)
    return state, transitions


def test_opens_only_after_k_consecutive_and_closes_after_k_below():
    state, ts = run([0.3, 0.3, 0.2, 0.3, 0.3, 0.3])
    assert ts == [None, None, None, None, None, "opened"] and state.is_open
    state, ts = run([0.3, 0.3, 0.3, 0.05, 0.2, 0.05, 0.05])
    assert ts == [None, None, "opened", None, None, None, "closed"] and not state.is_open


def test_not_significant_or_no_data_never_opens():
    assert run([0.9] * 10, significant=False)[0].is_open is False
    state, ts = run([0.3, None, 0.3, None, 0.3])
    assert ts[-1] == "opened"  # None (not enough data) neither counts nor resets


@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=60))
@settings(max_examples=200)
def test_transitions_alternate_and_match_state(values):
    state, ts = run(values)
    seen = [t for t in ts if t]
    assert all(a != b for a, b in zip(seen, seen[1:]))
    assert state.is_open == (bool(seen) and seen[-1] == "opened")
