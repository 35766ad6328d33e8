"""Per-variant confidence calibration for tasks whose confidence is not a softmax: each variant
of a single-sigmoid classifier and of a YOLO-style detector gets its own threshold on the task's
measure ("task:sigmoid", "task:detection"), chosen so it falls back as often as FP32 does at the
task's default threshold; the agent serves with the variant's calibrated threshold unless the
config sets one."""

from __future__ import annotations

import pytest

from models import sigmoid_classifier, sigmoid_data, yolo_data, yolo_detector
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.tasks import DEFAULT_THRESHOLDS

from compile_fixtures import ORT_TASKS, compile_for_profile


def _compile(tmp, model, x):
    return compile_for_profile(tmp, ORT_TASKS, model, x)


@pytest.mark.parametrize("kind", ["sigmoid", "detection"])
def test_each_variant_gets_a_threshold_on_the_tasks_own_confidence(tmp_path, kind):
    if kind == "sigmoid":
        result = _compile(tmp_path, sigmoid_classifier(tmp_path / "m.onnx"), sigmoid_data()[0][:300])
    else:
        result = _compile(tmp_path, yolo_detector(tmp_path / "m.onnx"), yolo_data(200, 5))
    variants = [v for v in result.manifest.variants if v.calibration is not None]
    assert {v.precision for v in variants} == {"fp32", "int8"}
    for v in variants:
        c = v.calibration
        assert c.measure == f"task:{kind}" and c.temperature == 1.0
        fit = c.fit
        assert fit["reference_threshold"] == DEFAULT_THRESHOLDS[kind]
        # the variant falls back about as often as FP32 does at the default threshold (held-out half)
        assert abs(c.expected_fallback_rate - fit["reference_fallback_rate_eval"]) <= 0.1, (v.id, c)

    fp32 = next(v for v in variants if v.precision == "fp32")
    x = sigmoid_data()[0][:8] if kind == "sigmoid" else yolo_data(8, 9)
    base = {
        "trust.allow_unsigned": True,
        "model.dir": result.out,
        "model.variant": fp32.id,
        "server.endpoint": f"ipc://{tmp_path}/a.sock",
        "hard_examples.data_dir": tmp_path / "data",
    }
    with Agent(AgentConfig.from_keys(base)) as agent, AgentClient(agent.endpoint) as client:
        assert client.infer(x).threshold == pytest.approx(fp32.calibration.threshold, abs=1e-6)
        assert agent.policy.threshold == pytest.approx(fp32.calibration.threshold, abs=1e-6)
    with Agent(AgentConfig.from_keys({**base, "policy.threshold": 0.66})) as agent:
        assert agent.policy.threshold == pytest.approx(0.66)  # the config's threshold wins
