"""Confidence per task at the agent: a single sigmoid, a detector, a CTC recognizer and an
embedding are scored by their own measure (tandem.tasks), never as one flat softmax row;
softmax classifiers keep ConfidencePolicy and its fast path."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from models import sigmoid_classifier, sigmoid_data, yolo_data, yolo_detector
from compile_fixtures import ORT_FP32, compile_for_profile
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.policy import ConfidencePolicy, PolicyError, TaskPolicy, task_policy_for
from tandem.tasks import TaskSpec, class_labels, detections


def test_single_sigmoid_is_not_sigmoided_again_nor_inverted():
    out = np.array([[0.02], [0.97], [0.6]], np.float32)
    policy = task_policy_for({"kind": "classification", "scores": "sigmoid"}, None, None, "auto")
    scores = policy.score([out])
    assert scores.labels.tolist() == [0, 1, 1]
    assert np.allclose(scores.confidence, [0.98, 0.97, 0.6]) and scores.confident.tolist() == [True, True, False]
    # what the softmax-row policy makes of the same output: the bug this replaces
    assert ConfidencePolicy().score([out]).labels.tolist() == [1, 1, 1]


def test_ctc_output_is_scored_per_sequence_not_as_one_flat_row():
    steps = np.full((2, 6, 5), 0.025, np.float32)
    for row, path in enumerate([[1, 1, 0, 2, 0, 3], [4, 0, 4, 0, 0, 0]]):
        steps[row, np.arange(6), path] = 0.9
    steps[1, 1] = [0.45, 0.05, 0.0, 0.05, 0.45]  # one unsure step
    policy = task_policy_for({"kind": "ctc", "blank": 0}, None, None, "auto")
    scores = policy.score([steps])
    assert scores.labels.tolist() == [3, 2]  # sequence lengths: "1 2 3" and "4 4"
    assert np.allclose(scores.confidence, [0.9, 0.45]) and scores.confident.tolist() == [True, False]


def test_detector_confidence_counts_boxes_in_the_ambiguity_band():
    rows = np.array(
        [
            [[0, 0, 10, 10, 0.95, 1], [20, 20, 30, 30, 0.9, 2], [0, 0, 0, 0, 0.0, 0]],
            [[0, 0, 10, 10, 0.95, 1], [20, 20, 30, 30, 0.3, 2], [40, 40, 50, 50, 0.2, 0]],
        ],
        np.float32,
    )
    policy = TaskPolicy(TaskSpec("detection", layout="nms"))
    scores = policy.score([rows])
    assert scores.labels.tolist() == [2, 2]  # boxes kept at score >= 0.25
    assert np.allclose(scores.confidence, [1.0, 1 / 3]) and scores.confident.tolist() == [True, False]


def test_no_confidence_tasks_stay_on_the_edge_unless_configured_otherwise():
    emb = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    edge = task_policy_for({"kind": "embedding"}, None, None, "auto").score([emb])
    assert edge.confident.all() and np.all(edge.confidence == 1.0)
    cloud = TaskPolicy(TaskSpec("regression"), no_confidence="cloud").score([emb[:, :1]])
    assert not cloud.confident.any()
    with pytest.raises(PolicyError, match="no_confidence"):
        TaskPolicy(TaskSpec("embedding"), no_confidence="sometimes")


def test_softmax_classifiers_configured_transforms_and_unreadable_tasks_keep_the_confidence_policy(caplog):
    assert task_policy_for({"kind": "classification", "output": "p"}, None, None, "auto") is None
    assert task_policy_for({"kind": "classification", "scores": "logits"}, None, None, "auto") is None
    assert task_policy_for({"kind": "ctc"}, None, None, "softmax") is None  # the operator's transform wins
    with caplog.at_level(logging.WARNING):
        assert task_policy_for({"kind": "classification", "classes": 10}, None, None, "auto") is None
    assert "classes" in caplog.text


def test_wrong_shape_for_the_task_is_a_policy_error():
    with pytest.raises(PolicyError, match="ctc"):
        TaskPolicy(TaskSpec("ctc")).score([np.zeros((2, 5), np.float32)])


def _compiled(tmp, model, x):
    return compile_for_profile(tmp, ORT_FP32, model, x).out


@pytest.mark.parametrize("kind", ["sigmoid", "yolo"])
def test_agent_serves_compiled_task_models_with_their_own_confidence(tmp_path, kind):
    if kind == "sigmoid":
        x = sigmoid_data()[0][:200]
        model = sigmoid_classifier(tmp_path / "m.onnx")
    else:
        x = yolo_data(40, 3)
        model = yolo_detector(tmp_path / "m.onnx")
    out = _compiled(tmp_path, model, x)
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": out,
            "model.variant": "onnxruntime-fp32",
            "server.endpoint": f"ipc://{tmp_path}/a.sock",
            "hard_examples.data_dir": tmp_path / "data",
        }
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        answer = client.infer(x[:16], return_outputs=True)
        spec = TaskSpec.from_dict(agent.model.manifest.task)
    raw = next(iter(answer.outputs.values()))
    if kind == "sigmoid":
        p = raw[:, 0]
        assert answer.labels == class_labels(spec, raw).tolist() == (p >= 0.5).astype(int).tolist()
        assert np.allclose(answer.confidence, np.maximum(p, 1 - p), atol=1e-6)
    else:
        assert answer.labels == [len(d) for d in detections(spec, raw)]
        assert all(0.0 <= c <= 1.0 for c in answer.confidence)


def test_hub_reads_edge_agreement_by_the_task():
    from types import SimpleNamespace

    from tandem.cloud_hub.inference.servicer import edge_agrees

    def model(task):
        return SimpleNamespace(manifest=SimpleNamespace(task=task), output_names=["p"])

    sigmoid = model({"kind": "classification", "output": "p", "scores": "sigmoid"})
    assert edge_agrees(sigmoid, [np.array([[0.9]], np.float32)], 1) is True  # argmax of [N, 1] would say 0
    assert edge_agrees(sigmoid, [np.array([[0.1]], np.float32)], 1) is False
    softmax = model({"kind": "classification", "output": "p"})
    assert edge_agrees(softmax, [np.array([[0.1, 0.7, 0.2]], np.float32)], 1) is True
    assert edge_agrees(model({"kind": "embedding"}), [np.ones((1, 8), np.float32)], 0) is None
