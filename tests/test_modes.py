"""The pure serving-mode decision and the fallback budget: unit and property tests (no I/O, no clock)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.edge_agent.modes import (
    BUDGET_REASON,
    HOUR_S,
    Action,
    FallbackBudget,
    ServingMode,
    decide,
    effective_mode,
)


def test_each_mode_decides_as_documented():
    rng = random.Random(0)
    for confident in (True, False):
        assert decide(ServingMode.EDGE_ONLY, confident, FallbackBudget(), 0.0).action is Action.EDGE
        assert decide(ServingMode.CLOUD_ONLY, confident, FallbackBudget(), 0.0).action is Action.CLOUD
        assert decide(ServingMode.SHADOW, confident, None, 0.0, 1.0, rng).action is Action.SHADOW
        assert decide(ServingMode.SHADOW, confident, None, 0.0, 0.0, rng).action is Action.EDGE
    assert decide(ServingMode.HYBRID, True, None, 0.0).action is Action.EDGE
    assert decide(ServingMode.HYBRID, False, None, 0.0).action is Action.CLOUD


def test_a_requests_own_mode_wins_over_the_devices_and_auto_keeps_the_devices():
    for device in ServingMode:
        assert effective_mode(None, device) is device
        for requested in (ServingMode.EDGE_ONLY, ServingMode.CLOUD_ONLY):
            assert effective_mode(requested, device) is requested


def test_modes_parse_by_name_and_bad_names_list_the_choices():
    assert ServingMode.parse("shadow") is ServingMode.SHADOW
    with pytest.raises(ValueError, match="edge-only, cloud-only, hybrid, shadow"):
        ServingMode.parse("cloud")


def test_confident_hybrid_and_edge_only_never_spend_the_budget():
    budget = FallbackBudget(rps=1, burst=1)
    for _ in range(5):
        decide(ServingMode.HYBRID, True, budget, 0.0)
        decide(ServingMode.EDGE_ONLY, False, budget, 0.0)
    assert budget.tokens(0.0) == 1.0


def test_spent_budget_degrades_with_the_reason_and_refills_with_time():
    budget = FallbackBudget(rps=2, burst=2, now=0.0)
    actions = [decide(ServingMode.HYBRID, False, budget, 0.0).action for _ in range(4)]
    assert actions == [Action.CLOUD, Action.CLOUD, Action.BUDGET_SPENT, Action.BUDGET_SPENT]
    spent = decide(ServingMode.CLOUD_ONLY, True, budget, 0.1)
    assert spent.action is Action.BUDGET_SPENT
    assert spent.detail.startswith(BUDGET_REASON) and "2 hub requests/s (burst 2)" in spent.detail
    assert decide(ServingMode.CLOUD_ONLY, True, budget, 0.5).action is Action.CLOUD  # 0.5 s * 2/s = one token
    assert budget.spent["requests"] == 3


def test_bytes_per_hour_refuses_big_payloads_until_the_hour_has_passed():
    budget = FallbackBudget(bytes_per_hour=1000)
    assert budget.take(0.0, 600) is None
    reason = budget.take(10.0, 600)
    assert reason is not None and "1000 request bytes/hour" in reason
    assert budget.take(20.0, 400) is None and budget.bytes_left() == 0
    assert budget.take(HOUR_S - 1, 1) is not None  # still inside the hour
    assert budget.take(HOUR_S + 61, 600) is None  # the first admissions have left the window
    assert budget.take(0.0, 2000) is not None  # bigger than the whole budget: never admitted


def test_shadow_samples_at_the_rate_and_skips_samples_over_budget():
    rng = random.Random(7)
    picks = [decide(ServingMode.SHADOW, True, None, 0.0, 0.25, rng).action for _ in range(4000)]
    share = picks.count(Action.SHADOW) / len(picks)
    assert 0.2 < share < 0.3
    budget = FallbackBudget(rps=1, burst=1)
    assert decide(ServingMode.SHADOW, False, budget, 0.0, 1.0, rng).action is Action.SHADOW
    assert decide(ServingMode.SHADOW, False, budget, 0.0, 1.0, rng).action is Action.EDGE  # never degraded


def test_bad_budget_settings_name_the_key():
    with pytest.raises(ValueError, match="budget_rps"):
        FallbackBudget(rps=0)
    with pytest.raises(ValueError, match="budget_burst"):
        FallbackBudget(rps=1, burst=0.5)
    with pytest.raises(ValueError, match="budget_bytes_per_hour"):
        FallbackBudget(bytes_per_hour=0)


def test_a_clock_stepping_back_refills_nothing():
    budget = FallbackBudget(rps=1, burst=1, now=100.0)
    assert budget.take(100.0) is None
    assert budget.take(50.0) is not None
    assert budget.take(100.5) is not None
    assert budget.take(101.0) is None


gaps = st.lists(st.floats(min_value=0.0, max_value=2.0, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(gaps=gaps, rps=st.floats(min_value=0.1, max_value=50.0), burst=st.integers(min_value=1, max_value=10))
def test_the_bucket_never_admits_more_than_rate_times_t_plus_burst(gaps, rps, burst):
    budget = FallbackBudget(rps=rps, burst=burst, now=0.0)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if budget.take(now) is None:
            admitted.append(now)
    # over every span between two admissions (inclusive), count <= burst + rps * span
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rps * (admitted[j] - admitted[i]) + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=900.0, allow_nan=False), st.integers(min_value=0, max_value=400)),
        min_size=1,
        max_size=200,
    ),
    limit=st.integers(min_value=1, max_value=2000),
)
def test_no_hour_ever_carries_more_than_the_bytes_budget(steps, limit):
    budget = FallbackBudget(bytes_per_hour=limit)
    now, admitted = 0.0, []
    for gap, nbytes in steps:
        now += gap
        if budget.take(now, nbytes) is None:
            admitted.append((now, nbytes))
    for i, (start, _) in enumerate(admitted):
        in_hour = sum(n for t, n in admitted[i:] if t - start <= HOUR_S)
        assert in_hour <= limit


# -- the hub's agreement gate (cloud_hub/rollouts/quality.py) -----------------------------------------------------


def _window(device: str, seq: int, version: str, requests: int, shadow: int, agree: int) -> bytes:
    from tandem.protocols import limits
    from tandem.protocols.telemetry_codec import TelemetryWindow, encode_window

    w = TelemetryWindow(
        schema_version=limits.TELEMETRY_SCHEMA_VERSION,
        device_id=device,
        sequence=seq,
        model_name="digits",
        model_version=version,
        start_unix=0.0,
        end_unix=10.0,
        shadow_samples=shadow,
        shadow_agree=agree,
    )
    w.requests.edge = requests
    w.confidence_counts.extend([0] * 19 + [requests])
    return encode_window(w)


def _compare(wave_agree: int, control_agree: int, shadow: int = 200):
    from tandem.cloud_hub.rollouts.quality import QualityQuery, compare_cohorts

    q = QualityQuery(("w1",), ("c1",), "2.0.0", 0.0)
    return compare_cohorts(
        q,
        [_window("w1", 1, "2.0.0", 300, shadow, wave_agree)],
        [_window("c1", 1, "1.0.0", 300, shadow, control_agree)],
        10.0,
    )


def test_agreement_gate_halts_a_wave_that_agrees_with_the_cloud_less_than_the_control():
    from tandem.cloud_hub.rollouts.controller import GatePolicy
    from tandem.cloud_hub.rollouts.quality import verdict

    gates = GatePolicy(min_quality_requests=100, max_agreement_drop_vs_control=0.05, min_shadow_samples=100)
    halt = verdict(_compare(150, 190), gates)  # 0.75 vs 0.95
    assert halt == (
        "halt",
        "shadow agreement with the cloud model 0.75 vs control 0.95 (max drop 0.05; "
        "200 wave and 200 control shadow samples)",
    )
    assert verdict(_compare(182, 190), gates) == ("pass", "")  # 0.91 vs 0.95: within the drop
    assert verdict(_compare(30, 95, shadow=99), gates) == ("pass", "")  # too few samples: not judged
    assert verdict(_compare(150, 190), GatePolicy(min_quality_requests=100, max_agreement_drop_vs_control=None)) == (
        "pass",
        "",
    )
    figures = _compare(150, 190).as_dict()
    assert (figures["wave"]["agreement"], figures["control"]["shadow_samples"]) == (0.75, 200)


def test_agreement_gate_settings_are_checked():
    from tandem.cloud_hub.rollouts.controller import GatePolicy, RolloutError

    with pytest.raises(RolloutError, match="max_agreement_drop_vs_control"):
        GatePolicy(max_agreement_drop_vs_control=1.5)
    with pytest.raises(RolloutError, match="min_shadow_samples"):
        GatePolicy(min_shadow_samples=0)


def test_windows_count_shadow_and_budget_figures_and_the_codec_checks_them():
    from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator
    from tandem.protocols.telemetry_codec import TelemetryDecodeError, decode_window, encode_window, window_to_dict

    agg = WindowAggregator("dev-1", ModelInfo("digits", "1.0.0"), now=0.0)
    agg.record("edge", 1.0, 0.9, 3)
    agg.record("edge-degraded", 1.0, 0.4, 2, budget_spent=True)
    agg.record_shadow(3, 2)
    with pytest.raises(ValueError, match="budget_spent"):
        agg.record("cloud", 1.0, budget_spent=True)
    w = agg.close(5.0)
    w.sequence = 1
    back = window_to_dict(decode_window(encode_window(w)))
    assert (back["shadow_samples"], back["shadow_agree"], back["budget_spent"]) == (3, 2, 1)
    w.shadow_agree = 4
    with pytest.raises(TelemetryDecodeError, match="shadow_agree"):
        decode_window(encode_window(w))
    w.shadow_agree, w.budget_spent = 2, 5
    with pytest.raises(TelemetryDecodeError, match="budget_spent"):
        decode_window(encode_window(w))
    agg.record_shadow(2, 2)  # a shadow answer that comes back after its request's window closed still counts
    late = agg.close(9.0)
    assert late is not None and (late.shadow_samples, late.requests.edge) == (2, 0)
