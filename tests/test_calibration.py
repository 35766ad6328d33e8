"""Per-variant confidence calibration: temperature fitting, threshold choice for a goal,
the manifest fields, and how the agent resolves and applies them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tandem.edge_agent.policy import DEFAULT_THRESHOLDS, ConfidencePolicy, PolicyError, resolve_threshold
from tandem.model_compiler.confidence import (
    DEFAULT_REFERENCE_THRESHOLD,
    CalibrationInputs,
    Goal,
    calibrate_variant,
    fallback_rate,
    fit_temperature,
    hybrid_accuracy,
    log_probs,
    nll,
    scaled_probs,
    split_fit_eval,
    threshold_for_budget,
    threshold_for_hybrid,
)
from tandem.model_compiler.errors import CompileError
from tandem.protocols.manifest import (
    Calibration,
    FileEntry,
    Manifest,
    ManifestError,
    ProfileChoice,
    TensorSpec,
    Variant,
)

SHA = "cd" * 32


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _synthetic(n: int, classes: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / true_t): the right temperature is true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(n, classes))
    p = _softmax(logits / true_t)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


# -- temperature -------------------------------------------------------------------------


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature_from_logits(true_t):
    logits, labels = _synthetic(20000, 5, true_t)
    fitted = fit_temperature(log_probs(logits, probabilities=False), labels)
    assert fitted == pytest.approx(true_t, rel=0.06)


def test_probabilities_and_logits_calibrate_the_same():
    logits, labels = _synthetic(4000, 4, 2.0, seed=3)
    from_logits = fit_temperature(log_probs(logits, False), labels)
    from_probs = fit_temperature(log_probs(_softmax(logits).astype(np.float32), True), labels)
    assert from_probs == pytest.approx(from_logits, rel=1e-3)
    np.testing.assert_allclose(
        scaled_probs(log_probs(_softmax(logits), True), 2.0), scaled_probs(log_probs(logits, False), 2.0), atol=1e-6
    )


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(2, 40), st.integers(2, 6)), elements=st.floats(-30, 30, allow_nan=False)
    ),
    st.data(),
)
def test_calibrated_nll_never_exceeds_uncalibrated_on_the_fit_set(logits, data):
    labels = np.array(
        data.draw(st.lists(st.integers(0, logits.shape[1] - 1), min_size=len(logits), max_size=len(logits)))
    )
    logp = log_probs(logits, probabilities=False)
    t = fit_temperature(logp, labels)
    assert 0.05 <= t <= 20.0
    assert nll(logp, labels, t) <= nll(logp, labels, 1.0) + 1e-12


# -- thresholds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0.0, 0.05, 0.1, 0.37, 1.0])
def test_threshold_for_a_budget_gives_that_fallback_rate(budget):
    conf = np.random.default_rng(1).uniform(0.3, 1.0, size=400)
    t = threshold_for_budget(conf, budget)
    assert 0.0 <= t <= 1.0
    assert fallback_rate(conf, t) == pytest.approx(budget, abs=1 / 400)


def test_threshold_for_a_budget_with_ties_takes_the_nearest_reachable_rate():
    conf = np.array([1.0] * 90 + [0.5] * 10)  # many exact 1.0s, as a confident float32 model gives
    t = threshold_for_budget(conf, 0.04)
    assert fallback_rate(conf, t) == 0.0  # 0 is nearer 0.04 than 0.1 is
    assert fallback_rate(conf, threshold_for_budget(conf, 0.08)) == pytest.approx(0.1)


def test_hybrid_goal_takes_the_least_fallback_within_the_cloud_accuracy():
    labels = np.arange(10) % 3
    edge = labels.copy()
    edge[:3] = (labels[:3] + 1) % 3  # the three least confident answers are wrong
    conf = np.linspace(0.5, 0.95, 10)
    cloud = labels.copy()
    t, met = threshold_for_hybrid(conf, edge, cloud, labels, within_points=0.0)
    assert met and fallback_rate(conf, t) == pytest.approx(0.3)
    assert hybrid_accuracy(conf, edge, cloud, labels, t) == 1.0
    t, met = threshold_for_hybrid(conf, edge, cloud, labels, within_points=20.0)  # two wrong answers allowed
    assert met and fallback_rate(conf, t) == pytest.approx(0.1)


def test_split_is_stratified_disjoint_and_covers_the_validation_set():
    labels = np.repeat(np.arange(5), 21)
    fit, ev, how = split_fit_eval(len(labels), labels)
    assert not set(fit) & set(ev) and len(fit) + len(ev) == len(labels)
    assert set(labels[fit]) == set(labels[ev]) == set(range(5))
    assert "stratified" in how
    small_fit, small_ev, how = split_fit_eval(8, None)
    assert list(small_fit) == list(small_ev) == list(range(8)) and "too few" in how


def test_match_reference_keeps_the_reference_fallback_rate_for_a_shifted_variant():
    """The case the issue reports: a variant scoring lower than FP32 keeps FP32's fallback rate."""
    rng = np.random.default_rng(5)
    n, k = 600, 10
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += rng.uniform(1.0, 9.0, n)
    reference = _softmax(logits)
    shifted = _softmax(logits * 0.75)  # lower confidence, same answers
    fit, ev, how = split_fit_eval(n, labels)
    data = CalibrationInputs(fit=fit, evaluation=ev, split=how, labels=labels, reference_conf=reference.max(axis=1))
    goal = Goal()
    ref_rate = fallback_rate(reference.max(axis=1)[ev], DEFAULT_REFERENCE_THRESHOLD)
    shared_rate = fallback_rate(shifted.max(axis=1)[ev], DEFAULT_REFERENCE_THRESHOLD)
    assert shared_rate - ref_rate > 0.05  # the shared threshold misfires
    record = calibrate_variant(shifted, True, goal, data, "probabilities")
    assert abs(record["expected_fallback_rate"] - ref_rate) <= 0.02
    assert record["temperature"] < 1.0  # it sharpens the under-confident variant
    assert record["fit"]["nll_eval_calibrated"] <= record["fit"]["nll_eval_uncalibrated"]
    assert Calibration.from_dict(record, "v").threshold == record["threshold"]


def test_goals_are_checked():
    with pytest.raises(CompileError, match="--fallback-budget"):
        Goal("fallback-budget", budget=1.5).check()
    with pytest.raises(CompileError, match="--confidence-goal"):
        Goal("cheapest").check()
    data = CalibrationInputs(np.arange(4), np.arange(4), "all", np.zeros(4, np.int64), np.ones(4))
    with pytest.raises(CompileError, match="--cloud-model"):
        calibrate_variant(np.eye(4)[[0, 0, 0, 0]], True, Goal("hybrid-accuracy"), data)


def test_compiler_default_threshold_is_the_agents():
    assert DEFAULT_REFERENCE_THRESHOLD == DEFAULT_THRESHOLDS["max_prob"]


def test_cli_help_names_the_calibration_flags():
    from tandem.model_compiler.cli import build_parser

    text = build_parser().format_help()
    for flag in (
        "--confidence-goal",
        "--fallback-budget",
        "--reference-threshold",
        "--cloud-model",
        "--hybrid-within",
        "--no-confidence-calibration",
    ):
        assert flag in text


# -- manifest ---------------------------------------------------------------------------------


def _manifest(calibration: Calibration | None) -> Manifest:
    spec = TensorSpec("input", "float32", [-1, 64])
    variant = Variant(
        id="onnxruntime-int8",
        runtime="onnxruntime",
        precision="int8",
        files=[FileEntry("variants/m.onnx", SHA, 10)],
        inputs=[spec],
        outputs=[TensorSpec("probabilities", "float32", [-1, 10])],
        calibration=calibration,
    )
    return Manifest(
        name="digits",
        version="1.0.0",
        created_at="2026-12-01T00:00:00+00:00",
        expires_at=None,
        task={"kind": "classification", "output": "probabilities"},
        inputs=[spec],
        outputs=variant.outputs,
        variants=[variant],
        profiles={"cpu-x86": ProfileChoice(chosen=variant.id, reason="only")},
        target_profiles=["cpu-x86"],
    )


CAL = Calibration(
    temperature=1.3,
    threshold=0.74,
    goal={"kind": "match-reference", "reference_threshold": 0.8},
    expected_fallback_rate=0.052,
    output="probabilities",
    expected_accuracy=0.98,
    expected_hybrid_accuracy=0.99,
    fit={"samples_fit": 135},
)


def test_manifest_round_trips_calibration_and_old_manifests_stay_identical():
    m = _manifest(CAL)
    again = Manifest.from_json(m.to_json())
    assert again.variants[0].calibration == CAL and again.to_dict() == m.to_dict()
    old = _manifest(None).to_dict()
    assert "calibration" not in old["variants"][0]  # what older code wrote, and signed
    assert Manifest.from_dict(old).to_dict() == old and Manifest.from_dict(old).variants[0].calibration is None


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda c: c.update(temperature=0), "calibration.temperature"),
        (lambda c: c.update(threshold=1.5), "calibration.threshold"),
        (lambda c: c.update(goal={"kind": "cheapest"}), "calibration.goal.kind"),
        (lambda c: c.pop("expected_fallback_rate"), "calibration.expected_fallback_rate"),
        (lambda c: c.update(measure="vibes"), "calibration.measure"),
    ],
)
def test_bad_calibration_names_the_field(mutate, field):
    data = copy.deepcopy(_manifest(CAL).to_dict())
    mutate(data["variants"][0]["calibration"])
    with pytest.raises(ManifestError, match=f"variants\\[0\\].{field.replace('.', r'.')}"):
        Manifest.from_dict(data)


# -- agent side ---------------------------------------------------------------------------------


def test_threshold_resolution_order():
    assert resolve_threshold("max_prob", 0.3, CAL, 0.6).source == "config"
    assert resolve_threshold("max_prob", 0.3, CAL, 0.6).temperature is None  # a configured threshold is unscaled
    got = resolve_threshold("max_prob", None, CAL, 0.6)
    assert (got.threshold, got.temperature, got.source) == (0.74, 1.3, "calibration")
    assert resolve_threshold("max_prob", None, None, 0.6).threshold == 0.6
    assert resolve_threshold("max_prob", None, None, None).source == "policy default"
    # fitted for max_prob on "probabilities": another measure or output skips it
    assert resolve_threshold("margin", None, CAL, 0.6).source == "manifest task"
    assert resolve_threshold("max_prob", None, CAL, None, output="logits").source == "policy default"
    assert resolve_threshold("max_prob", None, CAL, None, output="probabilities").source == "calibration"


def test_policy_decides_on_the_tempered_confidence_and_reports_the_raw_one():
    probs = np.array([[0.7, 0.2, 0.1], [0.95, 0.04, 0.01]], np.float32)
    plain = ConfidencePolicy("max_prob", 0.75).score([probs])
    assert plain.confident.tolist() == [False, True] and plain.calibrated is None
    sharpened = ConfidencePolicy("max_prob", 0.75, temperature=0.5).score([probs])
    assert sharpened.confident.tolist() == [True, True]  # 0.7 -> 0.49/0.54 = 0.907 after T=0.5
    np.testing.assert_allclose(sharpened.confidence, plain.confidence)  # replies and telemetry: unscaled
    assert sharpened.calibrated[0] == pytest.approx(0.49 / (0.49 + 0.04 + 0.01), rel=1e-4)
    assert sharpened.labels.tolist() == plain.labels.tolist()
    nan = ConfidencePolicy("max_prob", 0.1, temperature=2.0).score([np.full((1, 3), np.nan, np.float32)])
    assert not nan.confident[0]
    assert ConfidencePolicy(temperature=1.0).temperature is None
    with pytest.raises(PolicyError, match="temperature"):
        ConfidencePolicy(temperature=-1.0)
