"""tandem-compile on the digits models writes a calibration for every variant, and an
agent serving the result scores with its variant's own temperature and threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.cli import main as compile_main
from tandem.model_compiler.confidence import fallback_rate, log_probs, scaled_probs, split_fit_eval
from tandem.protocols.manifest import load_manifest


@pytest.fixture(scope="module")
def hybrid_compiled(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated") / "digits"
    rc = compile_main(
        [
            str(digits_dir / "edge.onnx"),
            "--profiles",
            "cpu-x86,cpu-arm",
            "--calib",
            str(digits_dir / "calib.npz"),
            "--val",
            str(digits_dir / "val.npz"),
            "--out",
            str(out),
            "--cloud-model",
            str(digits_dir / "cloud.onnx"),
            "--hybrid-within",
            "0.5",
            "--no-timing",
            "--quiet",
            "--signing-key",
            str(out.parent / "key.pem"),
            "--json",
        ]
    )
    assert rc == 0
    return out


def _hybrid(conf: np.ndarray, edge: np.ndarray, cloud: np.ndarray, y: np.ndarray, threshold: float) -> float:
    return float(np.mean(np.where(conf >= threshold, edge == y, cloud == y)))


@pytest.mark.slow
def test_every_digits_variant_gets_a_calibration_for_the_hybrid_goal(hybrid_compiled, digits_dir):
    """Each variant is run again here, with the cloud model, and its threshold checked against the
    goal on the half it was fitted on: hybrid accuracy within 0.5 points of the cloud's, and no
    threshold with less fallback would also be (a calibration that ignores the goal fails one)."""
    manifest = load_manifest(hybrid_compiled)
    assert {v.precision for v in manifest.variants} >= {"fp32", "int8"}
    val = np.load(digits_dir / "val.npz")
    x, y = val["x"].astype(np.float32), val["y"]
    cloud = load_session("onnxruntime", digits_dir / "cloud.onnx")
    cloud_pred = cloud.run({cloud.inputs[0].name: x})[0].argmax(axis=1)
    fit, ev, _ = split_fit_eval(len(y), y)
    target = float(np.mean(cloud_pred[fit] == y[fit])) - 0.005
    cloud_accuracy = manifest.source["reference"]["cloud_accuracy"]
    assert cloud_accuracy == pytest.approx(float(np.mean(cloud_pred == y)), abs=1e-6)
    report = json.loads((hybrid_compiled / "report.json").read_text())
    reported = {o["id"]: o["calibration"] for o in report["variants"] if o.get("calibration")}
    for v in manifest.variants:
        c = v.calibration
        assert c is not None, v.id
        assert 0.05 <= c.temperature <= 20 and 0.0 <= c.threshold <= 1.0 and c.measure == "max_prob"
        assert c.goal["kind"] == "hybrid-accuracy" and c.goal["within_points"] == 0.5 and c.goal["met_on_fit"]
        assert c.output == "probabilities"
        assert c.fit["samples_fit"] == len(fit) and c.fit["samples_eval"] == len(ev)
        assert c.fit["nll_eval_calibrated"] <= c.fit["nll_eval_uncalibrated"] + 0.05
        session = load_session(v.runtime, hybrid_compiled / v.model_file.path, **v.options.get("session", {}))
        raw = session.run({session.inputs[0].name: x})[0]
        conf = scaled_probs(log_probs(raw, True), c.temperature).max(axis=1)
        pred = raw.argmax(axis=1)
        # the goal holds on the fit half, and with any less fallback it would not
        assert _hybrid(conf[fit], pred[fit], cloud_pred[fit], y[fit], c.threshold) >= target - 1e-9, (v.id, c)
        sent = conf[fit][conf[fit] < c.threshold]
        if len(sent):  # keep the most confident sample it sends to the cloud, and the goal is missed
            assert _hybrid(conf[fit], pred[fit], cloud_pred[fit], y[fit], float(sent.max())) < target, (v.id, c)
        # the expected figures are what this variant really does on the other half
        assert c.expected_fallback_rate == pytest.approx(float(np.mean(conf[ev] < c.threshold)), abs=1.5 / len(ev))
        assert c.expected_hybrid_accuracy == pytest.approx(
            _hybrid(conf[ev], pred[ev], cloud_pred[ev], y[ev], c.threshold), abs=1.5 / len(ev)
        )
        assert c.expected_accuracy == pytest.approx(float(np.mean(pred[ev] == y[ev])), abs=1.5 / len(ev))
        # the report lists every calibrated variant with the manifest's figures
        assert reported[v.id]["threshold"] == c.threshold and reported[v.id]["temperature"] == c.temperature, v.id


@pytest.mark.slow
def test_fallback_budget_goal_and_no_calibration(digits_dir, tmp_path):
    args = [
        str(digits_dir / "edge.onnx"),
        "--profiles",
        "cpu-x86",
        "--calib",
        str(digits_dir / "calib.npz"),
        "--val",
        str(digits_dir / "val.npz"),
        "--no-timing",
        "--quiet",
        "--signing-key",
        str(tmp_path / "k.pem"),
        "--json",
    ]
    assert compile_main(args + ["--out", str(tmp_path / "budget"), "--fallback-budget", "0.1"]) == 0
    for v in load_manifest(tmp_path / "budget").variants:
        assert v.calibration.goal == {"kind": "fallback-budget", "budget": 0.1, "met_on_fit": True}
        assert abs(v.calibration.expected_fallback_rate - 0.1) <= 0.05, (v.id, v.calibration)
    assert compile_main(args + ["--out", str(tmp_path / "plain"), "--no-confidence-calibration"]) == 0
    assert all(v.calibration is None for v in load_manifest(tmp_path / "plain").variants)
    raw = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert all("calibration" not in v for v in raw["variants"])


@pytest.mark.slow
def test_agent_serves_with_its_variants_calibrated_threshold(hybrid_compiled, digits_dir, tmp_path):
    manifest = load_manifest(hybrid_compiled)
    int8 = next(v for v in manifest.variants if v.precision == "int8" and v.runtime == "onnxruntime")
    x = np.load(digits_dir / "test.npz")["x"].astype(np.float32)
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": hybrid_compiled,
            "model.variant": int8.id,
            "server.endpoint": f"ipc://{tmp_path}/a.sock",
            "hard_examples.data_dir": tmp_path / "data",
        }
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        assert agent.policy.threshold == pytest.approx(int8.calibration.threshold)
        assert agent.policy.temperature == pytest.approx(int8.calibration.temperature)
        raw = agent.model.session.run({"input": x})[0]
        reply = client.infer(x)
    conf = scaled_probs(log_probs(raw, True), int8.calibration.temperature).max(axis=1)
    expected_fallback = fallback_rate(conf, int8.calibration.threshold)
    # no hub configured: the agent answers locally, marking what it would have sent to the cloud
    assert np.allclose(reply.confidence, raw.max(axis=1), atol=1e-5)  # replies carry the unscaled confidence
    assert reply.threshold == pytest.approx(int8.calibration.threshold)
    assert 0.0 <= expected_fallback <= 0.2
    cfg2 = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": hybrid_compiled,
            "model.variant": int8.id,
            "server.endpoint": f"ipc://{tmp_path}/b.sock",
            "hard_examples.data_dir": tmp_path / "data2",
            "policy.threshold": 0.8,
        }
    )
    with Agent(cfg2) as agent:
        assert agent.policy.threshold == 0.8 and agent.policy.temperature is None  # config wins, unscaled
