"""The pure cores: the device's OTA state machine and health watch, the hub's rollout controller,
and the wire contract's strict decoding."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.cloud_hub.rollouts import controller as ctl
from tandem.cloud_hub.rollouts.controller import GatePolicy, RolloutError, Send
from tandem.edge_agent.ota.machine import (
    Z_EARLY,
    Z_FINAL,
    TERMINAL,
    TRANSITIONS,
    HealthFigures,
    TransitionError,
    WatchPolicy,
    advance,
    decide_health,
    excess_z,
    rise_z,
)
from tandem.protocols.ota import (
    OtaCommand,
    OtaMessageError,
    OtaStatus,
    decode_command,
    decode_status,
    encode_command,
    encode_status,
)
from tandem.protocols.signing import generate_private_key

# -- device state machine ---------------------------------------------------------------------


def test_happy_path_walks_every_step_in_order():
    state, seen = "idle", []
    while state not in TERMINAL:
        state = advance(state, "ok")
        seen.append(state)
    assert seen == ["downloading", "verifying", "staged", "self_test", "switched", "watching", "committed"]


@pytest.mark.parametrize("state", ["downloading", "verifying", "staged", "self_test"])
def test_errors_before_the_switch_fail_without_touching_the_model(state):
    assert advance(state, "error") == "failed"


@pytest.mark.parametrize("state", ["switched", "watching"])
def test_errors_after_the_switch_roll_back(state):
    assert advance(state, "error") == "rolled_back"


@pytest.mark.parametrize("state", TERMINAL)
def test_terminal_states_take_no_outcome(state):
    for outcome in ("ok", "error"):
        with pytest.raises(TransitionError, match=state):
            advance(state, outcome)


def test_every_non_terminal_state_is_reachable_and_leads_to_a_terminal_one():
    reachable = {"idle"} | set(TRANSITIONS.values())
    assert {s for s, _ in TRANSITIONS} <= reachable
    assert set(TERMINAL) <= reachable


# -- health watch -----------------------------------------------------------------------------

POLICY = WatchPolicy(watch_s=10, min_requests=20, max_error_rate=0.05, max_fallback_rise=0.15, max_latency_ratio=2.0)
BASE = HealthFigures(requests=100, errors=0, fallbacks=5, latency_p95_ms=2.0)


def test_healthy_model_is_committed_only_at_the_end_of_the_watch():
    good = HealthFigures(100, 1, 6, 2.1)
    assert decide_health(BASE, good, 5, POLICY).verdict == "wait"
    assert decide_health(BASE, good, 10, POLICY).verdict == "commit"


@pytest.mark.parametrize(
    "current, why",
    [
        (HealthFigures(100, 15, 5, 2.0), "error rate"),
        (HealthFigures(100, 0, 45, 2.0), "fallback rate"),  # a rise of 0.40, far beyond the 0.15 allowed
    ],
)
def test_a_breach_rolls_back_at_once(current, why):
    decision = decide_health(BASE, current, 1, POLICY)
    assert decision.verdict == "rollback" and why in decision.reason


def test_a_borderline_breach_waits_for_the_whole_watch():
    """6 errors in 100 against none in 100 (z 2.5): not enough to stop early, enough over the whole watch."""
    borderline = HealthFigures(100, 6, 5, 2.0)
    assert decide_health(BASE, borderline, 1, POLICY).verdict == "wait"
    decision = decide_health(BASE, borderline, 10, POLICY)
    assert decision.verdict == "rollback" and "error rate" in decision.reason


def test_a_short_run_of_hard_inputs_is_not_a_regression():
    """make demo's false rollback: 10 fallbacks in 20 requests right after the switch, the old version at 0.19."""
    base = HealthFigures(100, 0, 19, 1.0)
    assert decide_health(base, HealthFigures(20, 0, 10, 1.0), 1, POLICY).verdict == "wait"
    # over the whole watch the rate came back to the old one's: commit
    assert decide_health(base, HealthFigures(200, 0, 44, 1.0), 10, POLICY).verdict == "commit"
    # the same rise held over the whole watch is a regression
    assert decide_health(base, HealthFigures(200, 0, 100, 1.0), 10, POLICY).verdict == "rollback"


def test_a_large_rise_on_few_requests_is_not_significant():
    """0.35 over 20 requests against 0.15 over 20: the rise (0.20) is above the limit, the evidence is not (z 1.4)."""
    base = HealthFigures(20, 0, 3, 1.0)
    assert 1.0 < rise_z(7, 20, 3, 20) < Z_FINAL
    assert decide_health(base, HealthFigures(20, 0, 7, 1.0), 10, POLICY).verdict == "commit"


def test_latency_is_judged_once_over_the_whole_watch_not_on_early_polls():
    slow = HealthFigures(100, 0, 5, 4.5)
    assert decide_health(BASE, slow, 1, POLICY).verdict == "wait"
    decision = decide_health(BASE, slow, 10, POLICY)
    assert decision.verdict == "rollback" and "latency" in decision.reason


def test_many_short_polls_pool_their_latencies_instead_of_keeping_the_worst_p95():
    """The issue's false rollback: 0.25 s polls of 2-3 requests, one of them hit by CPU noise."""
    base = HealthFigures.of(200, 0, 0, [1.0] * 200)
    watch = HealthFigures()
    for i in range(80):  # 80 polls of 3 requests; every 10th poll has one 8 ms outlier
        watch = watch.merge(HealthFigures.of(3, 0, 0, [1.0, 1.1, 8.0 if i % 10 == 0 else 1.0]))
    assert watch.requests == 240 and watch.latency_p95_ms == pytest.approx(1.1)
    old_way = max(HealthFigures.of(3, 0, 0, [1.0, 1.1, 8.0]).latency_p95_ms or 0, 0)
    assert old_way / 1.0 > POLICY.max_latency_ratio  # the max of tiny-sample p95s would have rolled back
    assert decide_health(base, watch, 10, POLICY).verdict == "commit"


def test_a_stretched_tail_alone_is_host_noise_a_shifted_median_is_a_slower_model():
    base = HealthFigures.of(200, 0, 0, [1.0] * 190 + [2.0] * 10)
    noisy_tail = HealthFigures.of(200, 0, 0, [1.0] * 180 + [9.0] * 20)  # p95 9x, p50 unchanged
    assert decide_health(base, noisy_tail, 10, POLICY).verdict == "commit"
    slower = HealthFigures.of(200, 0, 0, [3.0] * 180 + [9.0] * 20)  # p95 and p50 both 3x and more
    decision = decide_health(base, slower, 10, POLICY)
    assert decision.verdict == "rollback" and "p50" in decision.reason


def test_latency_needs_min_requests_on_both_sides():
    thin_base = HealthFigures.of(5, 0, 0, [1.0] * 5)
    slower = HealthFigures.of(200, 0, 0, [5.0] * 200)
    assert decide_health(thin_base, slower, 10, POLICY).verdict == "commit"


def test_too_few_requests_say_nothing_until_the_watch_ends():
    sparse = HealthFigures(10, 10, 10, 100.0)  # all bad, but only 10 requests
    assert decide_health(BASE, sparse, 1, POLICY).verdict == "wait"
    assert decide_health(BASE, sparse, 10, POLICY).verdict == "commit"
    strict = WatchPolicy(**{**POLICY.__dict__, "commit_without_traffic": False})
    assert decide_health(BASE, sparse, 10, strict).verdict == "rollback"


def test_without_a_baseline_the_fallback_rise_is_the_rate_itself():
    assert decide_health(HealthFigures(), HealthFigures(100, 0, 10, 1.0), 10, POLICY).verdict == "commit"
    assert decide_health(HealthFigures(), HealthFigures(100, 0, 40, 1.0), 1, POLICY).verdict == "rollback"
    # 0.20 over 100 requests is no evidence of a rate above 0.15 (score z 1.4)
    assert decide_health(HealthFigures(), HealthFigures(100, 0, 20, 1.0), 10, POLICY).verdict == "commit"


def test_a_fallback_rise_just_over_the_limit_on_few_requests_is_no_evidence_of_a_rise_beyond_it():
    """make demo's false rollback of a healthy release (identical weights): an npu-litert device saw 6
    fallbacks in its first 14 requests against 11 in 108 before, limit 0.3. "Any rise" was significant
    (z 3.32 >= 3.29); a rise beyond 0.3 is not (z 0.2). A collapsed model is still caught at once."""
    demo = WatchPolicy(watch_s=30, min_requests=10, max_fallback_rise=0.3, max_latency_ratio=3.0)  # sim/runner.py's
    base = HealthFigures(108, 0, 11, 1.0)
    assert rise_z(6, 14, 11, 108) >= Z_EARLY  # what rolled it back
    assert excess_z(6, 14, 11, 108, 0.3) < 1.0
    assert decide_health(base, HealthFigures(14, 0, 6, 1.0), 5, demo).verdict == "wait"
    assert decide_health(base, HealthFigures(120, 0, 14, 1.0), 30, demo).verdict == "commit"
    collapsed = decide_health(base, HealthFigures(20, 0, 20, 1.0), 1, demo)  # every answer unsure
    assert collapsed.verdict == "rollback" and "beyond 0.300" in collapsed.reason


def test_the_excess_z_is_agresti_caffo_against_the_margin():
    """Checked against the textbook formula written out, and its coverage by simulation: for two versions
    whose true rise is exactly the margin, the one-sided test at Z_EARLY errs about as rarely as it says."""
    import numpy as np

    x1, n1, x2, n2, m = 30, 80, 10, 120, 0.1
    p1, p2 = 31 / 82, 11 / 122
    want = (p1 - p2 - m) / ((p1 * (1 - p1) / 82 + p2 * (1 - p2) / 122) ** 0.5)
    assert excess_z(x1, n1, x2, n2, m) == pytest.approx(want)
    rng = np.random.default_rng(7)
    for n_new, n_old, p_old in ((14, 108, 0.1), (40, 200, 0.05), (200, 400, 0.2)):
        new = rng.binomial(n_new, p_old + 0.3, 20_000)
        old = rng.binomial(n_old, p_old, 20_000)
        alarms = sum(excess_z(int(a), n_new, int(b), n_old, 0.3) >= Z_FINAL for a, b in zip(new, old))
        assert alarms / 20_000 < 0.08  # nominal 0.05 at Z_FINAL, on a rise exactly at the limit


@settings(max_examples=200, deadline=None)
@given(
    base=st.builds(HealthFigures, st.integers(0, 500), st.just(0), st.integers(0, 500), st.floats(0.1, 50)),
    n=st.integers(0, 500),
    errors=st.integers(0, 500),
    fallbacks=st.integers(0, 500),
    p95=st.floats(0.1, 50),
    elapsed=st.floats(0, 20),
)
def test_decision_agrees_with_the_policy(base, n, errors, fallbacks, p95, elapsed):
    base = HealthFigures(base.requests, 0, min(base.fallbacks, base.requests), base.latency_p95_ms)
    cur = HealthFigures(n, min(errors, n), min(fallbacks, n), p95)
    d = decide_health(base, cur, elapsed, POLICY)
    z_needed = Z_FINAL if elapsed >= POLICY.watch_s else Z_EARLY
    breach = n >= POLICY.min_requests and (
        (cur.error_rate > POLICY.max_error_rate and _z(cur.errors, n, base.errors, base.requests) >= z_needed)
        or (
            cur.fallback_rate - base.fallback_rate > POLICY.max_fallback_rise
            and _excess(cur.fallbacks, n, base.fallbacks, base.requests, POLICY.max_fallback_rise) >= z_needed
        )
    )
    slow = (
        elapsed >= POLICY.watch_s
        and min(n, base.requests) >= POLICY.min_requests
        and p95 / base.latency_p95_ms > POLICY.max_latency_ratio
    )  # no p50 here: p95 alone decides
    assert d.verdict == ("rollback" if breach or slow else "commit" if elapsed >= POLICY.watch_s else "wait")


def _excess(x1: int, n1: int, x2: int, n2: int, margin: float) -> float:
    """The property test's own model of "rose by more than margin": Agresti-Caffo, or a score test without a baseline."""
    if n2 == 0:
        return (x1 / n1 - margin) / (margin * (1 - margin) / n1) ** 0.5
    a, b = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
    return (a - b - margin) / (a * (1 - a) / (n1 + 2) + b * (1 - b) / (n2 + 2)) ** 0.5


def _z(x1: int, n1: int, x2: int, n2: int) -> float:
    """The textbook pooled two-proportion z: the property test's own model of the decision."""
    if n2 == 0:
        return float("inf") if x1 else 0.0
    p = (x1 + x2) / (n1 + n2)
    if p in (0.0, 1.0):
        return float("inf") if x1 / n1 > x2 / n2 else 0.0
    return (x1 / n1 - x2 / n2) / (p * (1 - p) * (1 / n1 + 1 / n2)) ** 0.5


@settings(max_examples=300, deadline=None)
@given(
    n_old=st.integers(0, 400),
    n_new=st.integers(0, 400),
    old=st.floats(0, 1),
    new=st.floats(0, 1),
    extra=st.integers(0, 50),
    elapsed=st.floats(0, 20),
)
def test_more_fallbacks_never_turn_a_rollback_into_a_commit_and_early_verdicts_hold_at_the_end(
    n_old, n_new, old, new, extra, elapsed
):
    base = HealthFigures(n_old, 0, round(old * n_old), 1.0)
    cur = HealthFigures(n_new, 0, round(new * n_new), 1.0)
    worse = HealthFigures(n_new, 0, min(n_new, cur.fallbacks + extra), 1.0)
    first = decide_health(base, cur, elapsed, POLICY).verdict
    if first == "rollback":
        assert decide_health(base, worse, elapsed, POLICY).verdict == "rollback"
        assert decide_health(base, cur, POLICY.watch_s, POLICY).verdict == "rollback"  # Z_EARLY > Z_FINAL
    if cur.fallback_rate <= base.fallback_rate and n_old:
        assert first != "rollback"  # no rise, no rollback, whatever the counts


def test_the_z_statistic_matches_a_two_proportion_test_from_scipy():
    from scipy.stats import chi2_contingency

    for x1, n1, x2, n2 in ((25, 100, 5, 100), (7, 20, 3, 20), (60, 300, 40, 300), (1, 50, 0, 80)):
        chi2, _, _, _ = chi2_contingency([[x1, n1 - x1], [x2, n2 - x2]], correction=False)
        assert rise_z(x1, n1, x2, n2) == pytest.approx(chi2**0.5)  # z squared is Pearson's chi-squared


# -- rollout controller -------------------------------------------------------------------------

DEVICES = [f"d{i:03d}" for i in range(40)]


def _healthy(fallback=0.05):
    return {
        "baseline": {"requests": 50, "fallback_rate": 0.05, "latency_p95_ms": 1.0},
        "current": {"requests": 50, "fallback_rate": fallback, "latency_p95_ms": 1.0},
    }


def _report_all(r, step="committed", health=None, now=1.0):
    sends = []
    for d in list(r.opened()):
        if d.state in ("sent", "in_progress"):
            s, _ = ctl.on_status(
                r,
                d.device_id,
                step,
                "ok" if step == "committed" else "error",
                "",
                health if health is not None else _healthy(),
                now,
            )
            sends += s
    return sends


def test_a_commit_without_health_figures_does_not_pass_a_gate():
    """After a hub crash, devices answer a resent install with "committed, already active": without
    the figures it was committed on, that answer must not open the next wave."""
    r, _, _ = ctl.new_rollout(
        "ro-blind", "m", "2.0.0", DEVICES, [5, 100], GatePolicy(min_reporting=1.0, wave_timeout_s=60), now=0.0
    )
    _report_all(r, health={}, now=1.0)
    sends, _ = ctl.tick(r, 2.0)
    assert sends == [] and r.wave == 0 and r.status == "running"  # neither passed nor failed: waiting
    for d in r.opened():
        ctl.on_status(r, d.device_id, "committed", "ok", "already active", _healthy(), 3.0)
    sends, _ = ctl.tick(r, 4.0)
    assert r.wave == 1 and len(sends) == len(DEVICES) - 2


def test_hub_downtime_does_not_time_a_wave_out():
    r, _, _ = ctl.new_rollout(
        "ro-down", "m", "2.0.0", DEVICES, [5, 100], GatePolicy(min_reporting=1.0, wave_timeout_s=60), now=0.0
    )
    ctl.resume_after_restart(r, 500.0)  # the hub was down from ~0 to 500 s
    sends, _ = ctl.tick(r, 510.0)
    assert r.status == "running" and sends == []
    _report_all(r, now=520.0)
    ctl.tick(r, 530.0)
    assert r.wave == 1  # passed on its devices' figures, not on the crash
    back = ctl.Rollout.from_dict(r.to_dict())
    assert back.wave_clock_from == 500.0
    ctl.tick(r, 2000.0)  # a silent wave still times out, counted from the restart
    assert r.status == "halted" and "within 60s" in r.reason


def test_wave_cutoffs_are_cumulative_and_cover_everyone():
    assert ctl.wave_cutoffs(40, [5, 25, 100]) == [2, 10, 40]
    assert ctl.wave_cutoffs(3, [5, 25, 100]) == [1, 1, 3]
    assert ctl.wave_cutoffs(1, [50, 100]) == [1, 1]
    for bad in ("0,100", "50,25,100", "5,25", "", "5,5,100"):
        with pytest.raises((RolloutError, ValueError)):
            ctl.parse_waves(bad)


def test_good_rollout_opens_every_wave_then_completes():
    r, sends, events = ctl.new_rollout("ro-1", "m", "1.1.0", DEVICES, [5, 25, 100], GatePolicy(), now=0.0)
    assert len(sends) == 2 and all(s.action == "install" for s in sends)
    opened = [len(sends)]
    for _ in range(3):
        assert ctl.tick(r, 1.0) == ([], [])  # nobody reported yet: wait
        _report_all(r)
        sends, events = ctl.tick(r, 2.0)
        if r.status == "completed":
            break
        opened.append(len(sends))
    assert opened == [2, 8, 30]
    assert r.status == "completed" and r.counts() == {"committed": 40}
    assert [e.kind for e in events] == ["gate_passed", "completed"]


def test_one_failure_halts_at_once_and_rolls_back_the_wave():
    r, sends, _ = ctl.new_rollout("ro-2", "m", "1.1.0", DEVICES, [5, 25, 100], GatePolicy(), now=0.0)
    first, second = [s.device_id for s in sends]
    ctl.on_status(r, first, "committed", "ok", "", _healthy(), 1.0)
    sends, events = ctl.on_status(r, second, "failed", "error", "self-test: output 'probabilities'", {}, 1.0)
    assert r.status == "halted" and "self-test" in r.reason
    assert sends == [Send(first, "rollback")]  # the failed device never switched; it is not 'sent' any more
    assert [d.state for d in r.devices.values() if d.wave > 0] == ["pending"] * 38
    ctl.on_status(r, first, "rolled_back", "ok", "the hub rolled back", {}, 2.0)
    assert r.devices[first].state == "rolled_back"
    assert ctl.tick(r, 3.0) == ([], [])  # a halted rollout opens nothing
    with pytest.raises(RolloutError, match="rolled back"):
        ctl.resume(r, 4.0)


def test_fallback_rise_over_the_gate_halts_after_the_wave_reports():
    r, _, _ = ctl.new_rollout("ro-3", "m", "1.1.0", DEVICES, [10, 100], GatePolicy(max_fallback_rise=0.1), now=0.0)
    _report_all(r, health=_healthy(fallback=0.4))
    sends, events = ctl.tick(r, 2.0)
    assert r.status == "halted" and "fallback rate rose by 0.350" in r.reason
    assert {s.action for s in sends} == {"rollback"} and len(sends) == 4


def test_drift_alerts_and_latency_are_gates_too():
    r, _, _ = ctl.new_rollout("ro-4", "m", "1.1.0", DEVICES, [10, 100], GatePolicy(), now=0.0)
    _report_all(r)
    ctl.tick(r, 2.0, drift_alerts=1)
    assert r.status == "halted" and "drift alert" in r.reason
    r, _, _ = ctl.new_rollout("ro-5", "m", "1.1.0", DEVICES, [10, 100], GatePolicy(max_latency_ratio=1.5), now=0.0)
    slow = _healthy()
    slow["current"]["latency_p95_ms"] = 3.0
    _report_all(r, health=slow)
    ctl.tick(r, 2.0)
    assert r.status == "halted" and "p95 latency is 3.00x" in r.reason


def test_the_wave_latency_gate_reads_latency_as_the_devices_do():
    """A tail stretched by host load (p95 3x, p50 unchanged) or a watch of a few requests is not a slower model;
    p95 and p50 both 3x over enough requests is (the median p95 ratio alone halted the first two)."""

    def wave(current: dict, requests: int = 50):
        r, _, _ = ctl.new_rollout("ro-lat", "m", "1.1.0", DEVICES, [10, 100], GatePolicy(), now=0.0)
        health = {
            "baseline": {"requests": 200, "fallback_rate": 0.05, "latency_p95_ms": 1.0, "latency_p50_ms": 0.5},
            "current": {"requests": requests, "fallback_rate": 0.05, **current},
        }
        _report_all(r, health=health)
        ctl.tick(r, 2.0)
        return r

    assert wave({"latency_p95_ms": 3.0, "latency_p50_ms": 0.5}).status == "running"  # host noise in the tail
    assert wave({"latency_p95_ms": 3.0, "latency_p50_ms": 1.5}, requests=5).status == "running"  # too few
    slower = wave({"latency_p95_ms": 3.0, "latency_p50_ms": 1.5})
    assert slower.status == "halted" and "latency (p95 and p50 alike) is 3.00x" in slower.reason


def test_a_silent_wave_halts_at_its_timeout_and_late_devices_catch_up():
    gates = GatePolicy(min_reporting=1.0, wave_timeout_s=30, auto_rollback=False)
    r, sends, _ = ctl.new_rollout("ro-6", "m", "1.1.0", DEVICES, [5, 100], gates, now=0.0)
    ctl.on_status(r, sends[0].device_id, "committed", "ok", "", _healthy(), 1.0)
    assert ctl.tick(r, 20.0) == ([], [])
    assert ctl.catch_up_device(r, sends[1].device_id) == [Send(sends[1].device_id, "install")]
    assert ctl.catch_up_device(r, sends[0].device_id) == []  # it already answered
    ctl.tick(r, 31.0)
    assert r.status == "halted" and "only 1 of 2 devices reported within 30s" in r.reason
    ctl.resume(r, 40.0)  # not rolled back: the operator may resume, and the timeout restarts
    ctl.on_status(r, sends[1].device_id, "committed", "ok", "", _healthy(), 41.0)
    sends, _ = ctl.tick(r, 42.0)
    assert len(sends) == 38 and r.wave == 1


def test_min_reporting_lets_a_wave_pass_with_devices_offline():
    r, sends, _ = ctl.new_rollout("ro-7", "m", "1.1.0", DEVICES, [25, 100], GatePolicy(min_reporting=0.8), now=0.0)
    for s in sends[:7]:  # 7 of 10: below 80%
        ctl.on_status(r, s.device_id, "committed", "ok", "", _healthy(), 1.0)
    assert ctl.tick(r, 2.0)[0] == []
    ctl.on_status(r, sends[7].device_id, "committed", "ok", "", _healthy(), 1.0)
    assert len(ctl.tick(r, 2.0)[0]) == 30


def test_pause_resume_abort_and_operator_rollback():
    r, sends, _ = ctl.new_rollout("ro-8", "m", "1.1.0", DEVICES, [5, 100], GatePolicy(), now=0.0)
    ctl.pause(r, 1.0)
    _report_all(r)
    assert ctl.tick(r, 2.0) == ([], [])  # paused: no wave opens
    with pytest.raises(RolloutError):
        ctl.pause(r, 2.0)
    ctl.resume(r, 3.0)
    assert len(ctl.tick(r, 4.0)[0]) == 38
    sends, events = ctl.rollback(r, 5.0)
    assert r.status == "rolled_back" and len(sends) == 40 and {s.action for s in sends} == {"rollback"}
    assert ctl.catch_up(r) and all(s.action == "rollback" for s in ctl.catch_up(r))
    with pytest.raises(RolloutError):
        ctl.abort(r, 6.0)


def test_rollout_round_trips_through_its_dict_form():
    r, _, _ = ctl.new_rollout("ro-9", "m", "1.1.0", DEVICES, [5, 25, 100], GatePolicy(max_drift_alerts=2), now=0.0)
    _report_all(r)
    assert ctl.Rollout.from_dict(r.to_dict()) == r


def test_gate_policy_names_a_bad_value():
    with pytest.raises(RolloutError, match="max_failure_rate"):
        GatePolicy(max_failure_rate=1.5)


# -- wire contract ------------------------------------------------------------------------------

KEY = generate_private_key()


def _command(**over):
    now = time.time()
    fields = dict(
        rollout_id="ro-1",
        action="install",
        model="digits",
        version="1.2.0",
        manifest_url="http://hub/v1/models/digits/versions/1.2.0/manifest",
        manifest_sha256="a" * 64,
        artifact_base_url="http://hub/v1/artifacts",
        issued_at=now,
        deadline=now + 60,
    )
    fields.update(over)
    return OtaCommand(**fields)


def test_command_round_trips_and_any_change_breaks_the_signature():
    cmd = _command()
    payload = encode_command(cmd, KEY)
    assert decode_command(payload, KEY.public_key()) == cmd
    tampered = payload.replace(b"1.2.0", b"1.9.0")
    with pytest.raises(OtaMessageError, match="signature"):
        decode_command(tampered, KEY.public_key())
    with pytest.raises(OtaMessageError, match="signature"):
        decode_command(payload, generate_private_key().public_key())


def test_expired_or_malformed_commands_are_refused():
    with pytest.raises(OtaMessageError, match="deadline passed"):
        decode_command(encode_command(_command(issued_at=0, deadline=1), KEY), KEY.public_key())
    for bad, why in (
        (dict(action="format"), "action"),
        (dict(version="1.2"), "version"),
        (dict(manifest_url="file:///etc/passwd"), "manifest_url"),
        (dict(rollout_id="a/b"), "rollout_id"),
    ):
        with pytest.raises(OtaMessageError, match=why):
            encode_command(_command(**bad), KEY)
    with pytest.raises(OtaMessageError, match="limit"):
        decode_command(b"{" + b" " * 20000 + b"}", KEY.public_key())


def test_status_must_match_its_topic_and_schema():
    st_ = OtaStatus("dev-1", 5, "ro-1", "committed", "ok", "digits", "1.2.0", "1.2.0", "1.1.0")
    assert decode_status(encode_status(st_), "dev-1") == st_
    with pytest.raises(OtaMessageError, match="does not match the topic"):
        decode_status(encode_status(st_), "dev-2")
    with pytest.raises(OtaMessageError, match="step"):
        encode_status(OtaStatus("dev-1", 5, "ro-1", "exploded", "ok", "digits", "1.2.0"))


def test_an_anti_rollback_rejection_of_a_catch_up_resend_keeps_the_devices_real_outcome():
    """A device that rolled 1.1.0 back on trial, restarted, and got the install again refuses it as
    'not higher than accepted': the rollout must keep 'rolled_back' (what happened), not 'rejected'."""
    r, sends, _ = ctl.new_rollout("ro-rr", "m", "1.1.0", DEVICES, [5, 100], GatePolicy(max_failure_rate=1.0), now=0.0)
    first = sends[0].device_id
    ctl.on_status(r, first, "rolled_back", "error", "restarted while this version was on trial", {}, 1.0)
    _, events = ctl.on_status(r, first, "rejected", "error", "1.1.0 is not higher than 1.1.0", {}, 2.0)
    assert r.devices[first].state == "rolled_back"
    assert r.devices[first].reason == "restarted while this version was on trial"
    assert events[0].detail["kept"] == "rolled_back"
    other = sends[1].device_id if len(sends) > 1 else next(d for d in r.devices if d != first)
    ctl.on_status(r, other, "rejected", "error", "manifest for another profile", {}, 3.0)
    assert r.devices[other].state == "rejected"  # a first answer of 'rejected' still counts as such


def test_the_rollout_service_catches_up_a_new_boot_or_a_return_but_not_a_status_republish(tmp_path):
    """An agent republishes its retained status after an OTA switch (same boot): repeating the install
    then would only earn a '(repeat)'; a new boot, or a return after 'offline', gets the catch-up."""
    from tandem.cloud_hub.rollouts.service import RolloutService, RolloutServiceConfig
    from tandem.cloud_hub.rollouts.store import RolloutStore
    from tandem.protocols.telemetry_codec import STATUS_OFFLINE, STATUS_ONLINE, encode_status
    from tandem.protocols.topics import status_topic

    store = RolloutStore.open(tmp_path)
    service = RolloutService(
        store, None, None, None, RolloutServiceConfig(mqtt_url="mqtt://127.0.0.1:1", public_url="http://127.0.0.1:1")
    )
    caught: list[str] = []
    service.catch_up = lambda device_id: caught.append(device_id) or 0  # type: ignore[method-assign]

    def say(state: str, **info: object) -> None:
        service._handle(status_topic("cam-1"), encode_status(state, "cam-1", **info))

    try:
        say(STATUS_ONLINE, boot="b1")  # first sight (e.g. the retained status when the hub subscribes)
        say(STATUS_ONLINE, boot="b1")  # republished after a switch
        say(STATUS_ONLINE, boot="b2")  # the agent restarted
        say(STATUS_OFFLINE)
        say(STATUS_ONLINE, boot="b2")  # back after being offline
        say(STATUS_ONLINE)  # an agent that does not say its boot: always caught up
        assert caught == ["cam-1"] * 4
    finally:
        store.close()
