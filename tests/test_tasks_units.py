"""The tasks package: spec round-trips and strictness, decoding, per-task metrics, the gate,
confidence and task inference, on hand-made outputs whose right answers are known."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.tasks import (
    TaskError,
    TaskSpec,
    budgets_for,
    class_labels,
    ctc_greedy,
    detections,
    gate,
    infer_task,
    task_confidence,
    task_metrics,
)
from tandem.tasks.metrics import character_error_rate, edit_distance
from tandem.tasks.spec import KINDS

ROOT = Path(__file__).resolve().parents[1]


def test_tasks_package_imports_only_numpy_and_the_standard_library():
    allowed = {"__future__", "dataclasses", "json", "math", "typing", "numpy"}
    for path in sorted((ROOT / "tasks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            for name in names:
                assert name.split(".")[0] in allowed or name.startswith("tandem.tasks"), f"{path.name} imports {name}"


# -- spec -------------------------------------------------------------------------------

spec_strategy = st.one_of(
    st.builds(
        TaskSpec,
        kind=st.just("classification"),
        scores=st.sampled_from(["probabilities", "logits", "sigmoid", "multi_label"]),
        positive_threshold=st.floats(0, 1),
        threshold=st.none() | st.floats(0, 1),
    ),
    st.builds(
        TaskSpec,
        kind=st.just("detection"),
        layout=st.sampled_from(["auto", "channels_first", "anchors_first", "nms"]),
        box_format=st.sampled_from(["cxcywh", "xyxy"]),
        score_threshold=st.floats(0, 1),
        iou_threshold=st.floats(0, 1),
        max_boxes=st.integers(1, 1000),
    ),
    st.builds(TaskSpec, kind=st.just("dense"), threshold=st.floats(0, 1)),
    st.builds(
        TaskSpec, kind=st.just("ctc"), blank=st.integers(0, 10000), output=st.none() | st.text(min_size=1, max_size=8)
    ),
    st.builds(
        TaskSpec, kind=st.sampled_from(["embedding", "regression", "custom"]), metric=st.none() | st.just("mod.x:fn")
    ),
)


@given(spec_strategy)
@settings(max_examples=150, deadline=None)
def test_spec_round_trips_through_json(spec):
    assert TaskSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "data, field",
    [
        ({"kind": "ctc", "blank": 0, "blnk": 3}, "blnk"),
        ({"kind": "classification", "layout": "nms"}, "layout"),  # a detection field on a classifier
        ({"kind": "detection", "score_threshold": 1.5}, "score_threshold"),
        ({"kind": "detection", "ambiguity": [0.5, 0.1]}, "ambiguity"),
        ({"kind": "ctc", "blank": -1}, "blank"),
        ({"kind": "segmentation"}, "kind"),
        ({"kind": "custom", "metric": "no_colon"}, "metric"),
    ],
)
def test_spec_refuses_unknown_and_invalid_fields_by_name(data, field):
    with pytest.raises(TaskError, match=field):
        TaskSpec.from_dict(data)


def test_legacy_manifest_task_objects_still_parse():
    assert TaskSpec.from_dict({"kind": "classification", "output": "p", "probabilities": False}).scores == "logits"
    assert TaskSpec.from_dict({"kind": "dense", "output": "m", "threshold": 0.3}).threshold == 0.3


def test_task_options_parse_by_field_type_and_refuse_other_kinds():
    spec = TaskSpec("detection").with_options({"score_threshold": "0.4", "max_boxes": "10", "ambiguity": "0.1,0.3"})
    assert (spec.score_threshold, spec.max_boxes, spec.ambiguity) == (0.4, 10, (0.1, 0.3))
    with pytest.raises(TaskError, match="blank"):
        TaskSpec("detection").with_options({"blank": "0"})


# -- classification ---------------------------------------------------------------------


def test_single_sigmoid_labels_are_not_inverted_and_confidence_is_max_p_1_minus_p():
    spec = TaskSpec("classification", scores="sigmoid")
    out = np.array([[0.02], [0.97], [0.5]], np.float32)
    assert class_labels(spec, out).tolist() == [0, 1, 1]
    conf = task_confidence(spec, out)
    assert np.allclose(conf.confidence, [0.98, 0.97, 0.5]) and conf.labels.tolist() == [0, 1, 1]


def test_multi_label_confidence_is_the_least_decided_label():
    conf = task_confidence(TaskSpec("classification", scores="multi_label"), np.array([[0.9, 0.05, 0.6]]))
    assert np.isclose(conf.confidence[0], 0.6) and conf.labels.tolist() == [2]


def test_classification_metrics_and_gate():
    spec = TaskSpec("classification", scores="logits")
    ref = np.eye(4)[[0, 1, 2, 3] * 25] * 5
    out = ref.copy()
    out[:3] = np.roll(out[:3], 1, axis=1)  # three answers change
    figures = task_metrics(spec, ref, out, labels=np.array([0, 1, 2, 3] * 25))
    assert figures["top1_agreement"] == pytest.approx(0.97) and figures["accuracy"] == pytest.approx(0.97)
    verdict = gate(spec, figures, budgets_for(spec))
    assert not verdict.passed and "top1_agreement 0.9700 misses budget >= 0.99" in verdict.reason
    assert gate(spec, figures, budgets_for(spec, {"top1_agreement": 0.95})).passed
    with pytest.raises(TaskError, match="cer"):
        budgets_for(spec, {"cer": 0.1})


# -- detection --------------------------------------------------------------------------


def _yolo_head(
    boxes_cxcywh: list[tuple[float, float, float, float]], scores: list[list[float]], anchors: int = 64
) -> np.ndarray:
    """[1, 4+C, anchors]: the given boxes first, the other anchors scoring zero."""
    classes = len(scores[0])
    head = np.zeros((1, 4 + classes, anchors), np.float32)
    head[0, :4, :] = 10.0
    for i, (b, s) in enumerate(zip(boxes_cxcywh, scores)):
        head[0, :4, i] = b
        head[0, 4:, i] = s
    return head


def test_yolo_head_decodes_in_both_layouts_with_nms():
    head = _yolo_head([(50, 50, 20, 20), (51, 50, 20, 20), (150, 80, 30, 10)], [[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]])
    spec = TaskSpec("detection")
    first = detections(spec, head)[0]
    second = detections(spec, head.transpose(0, 2, 1).copy())[0]  # [N, A, 4+C]
    for d in (first, second):
        assert len(d) == 2  # the overlapping second box is suppressed
        assert np.allclose(d.boxes[0], [40, 40, 60, 60]) and d.classes.tolist() == [0, 1]


def test_detection_metrics_see_what_dense_agreement_missed():
    spec = TaskSpec("detection")
    ref = _yolo_head([(50, 50, 20, 20), (150, 80, 30, 10)], [[0.9, 0.0], [0.0, 0.7]])
    moved = _yolo_head([(90, 50, 20, 20), (150, 80, 30, 10)], [[0.9, 0.0], [0.0, 0.7]])  # one box moved 40 px
    same = task_metrics(spec, ref, ref)
    assert same["map50"] == 1.0 and same["recall"] == 1.0 and same["matched_iou"] == 1.0
    figures = task_metrics(spec, ref, moved)
    assert figures["recall"] == 0.5 and figures["map50"] == pytest.approx(0.5, abs=0.01)
    assert not gate(spec, figures, budgets_for(spec)).passed
    dropped = task_metrics(spec, ref, _yolo_head([(50, 50, 20, 20), (150, 80, 30, 10)], [[0.9, 0.0], [0.0, 0.1]]))
    assert dropped["boxes_variant"] == 1 and dropped["recall"] == 0.5


def test_detection_after_nms_layout_and_confidence_counts_uncertain_boxes():
    spec = TaskSpec("detection", layout="nms")
    rows = np.array([[[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.3, 2], [0, 0, 0, 0, 0.0, 0]]], np.float32)
    d = detections(spec, rows)[0]
    assert len(d) == 2 and d.classes.tolist() == [1, 2]
    conf = task_confidence(spec, rows)
    assert conf.detail["uncertain_boxes"].tolist() == [1] and np.isclose(conf.confidence[0], 0.5)
    assert conf.labels.tolist() == [2]


# -- dense, CTC, embedding, regression ----------------------------------------------------


def test_dense_mask_iou_and_dice():
    spec = TaskSpec("dense", threshold=0.5)
    ref = np.zeros((1, 1, 10, 10), np.float32)
    ref[0, 0, :4, :5] = 0.9  # 20 pixels
    out = np.zeros_like(ref)
    out[0, 0, :2, :5] = 0.9  # 10 of them
    figures = task_metrics(spec, ref, out)
    assert figures["mask_iou"] == pytest.approx(0.5) and figures["dice"] == pytest.approx(2 * 10 / 30)
    assert figures["pixel_agreement"] == pytest.approx(0.9)


def _ctc_probs(paths: list[list[int]], classes: int = 5, sure: float = 0.9) -> np.ndarray:
    out = np.full((len(paths), len(paths[0]), classes), (1 - sure) / (classes - 1), np.float32)
    for i, path in enumerate(paths):
        for t, c in enumerate(path):
            out[i, t, c] = sure
    return out


def test_ctc_greedy_metrics_and_confidence():
    spec = TaskSpec("ctc", blank=0)
    ref = _ctc_probs([[1, 1, 0, 1, 2, 0], [3, 0, 3, 3, 0, 0]])
    assert ctc_greedy(spec, ref) == [(1, 1, 2), (3, 3)]
    out = _ctc_probs([[1, 1, 0, 1, 2, 0], [3, 3, 3, 3, 0, 0]])  # second line loses a character
    figures = task_metrics(spec, ref, out)
    assert figures["exact_match"] == 0.5 and figures["cer"] == pytest.approx(1 / 5)
    weak = ref.copy()
    weak[1, 2] = [0.4, 0.1, 0.1, 0.4, 0.0]
    conf = task_confidence(spec, weak)
    assert np.isclose(conf.confidence[0], 0.9) and np.isclose(conf.confidence[1], 0.4)
    assert (
        conf.labels.tolist() == [3, 2]
        and conf.detail["sequence_probability"][1] < conf.detail["sequence_probability"][0]
    )


@given(st.lists(st.integers(1, 6), max_size=12), st.lists(st.integers(1, 6), max_size=12))
def test_edit_distance_is_a_metric_bounded_by_lengths(a, b):
    a, b = tuple(a), tuple(b)
    d = edit_distance(a, b)
    assert d == edit_distance(b, a) and abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)
    assert character_error_rate([a], [a]) == 0.0


def test_embedding_and_regression_metrics_and_no_confidence():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 32))
    spec = TaskSpec("embedding", top_k=3)
    same = task_metrics(spec, emb, emb * 2.0)  # scale does not change a cosine
    assert same["cosine_p5"] == pytest.approx(1.0) and same["topk_agreement"] == 1.0
    noisy = task_metrics(spec, emb, emb + rng.normal(scale=2.0, size=emb.shape))
    assert noisy["cosine_p5"] < 0.9 and noisy["topk_agreement"] < 0.8
    assert not gate(spec, noisy, budgets_for(spec)).passed
    assert task_confidence(spec, emb).confidence is None and not spec.has_confidence
    reg = TaskSpec("regression")
    figures = task_metrics(reg, np.ones((10, 2)), np.ones((10, 2)) * 1.1)
    assert figures["rel_error_p95"] == pytest.approx(0.1)
    assert not gate(reg, figures, budgets_for(reg)).passed and gate(reg, figures, {"rel_error_p95": 0.2}).passed


# -- inference --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output, kind, detail",
    [
        (np.full((4, 10), 0.1, np.float32), "classification", "probabilities"),
        (np.random.default_rng(0).normal(size=(4, 10)) * 4, "classification", "logits"),
        (np.array([[0.02], [0.9]], np.float32), "classification", "sigmoid"),
        (np.array([[0.2, 0.9, 0.7]], np.float32), "classification", "multi_label"),
        (np.full((2, 40, 100), 0.01, np.float32), "ctc", "probabilities"),
        (_yolo_head([(50, 50, 20, 20)], [[0.9, 0.1]], anchors=400), "detection", "channels_first"),
        (_yolo_head([(50, 50, 20, 20)], [[0.9, 0.1]], anchors=400).transpose(0, 2, 1), "detection", "anchors_first"),
        (np.random.default_rng(1).uniform(size=(2, 1, 32, 32)), "dense", None),
        (np.array([[3.5], [-2.0]]), "regression", None),
        (np.random.default_rng(2).normal(size=(2, 3, 4, 5, 6)), "custom", None),
    ],
)
def test_task_inferred_from_outputs_with_a_reason(output, kind, detail):
    found = infer_task(["out"], [output])
    assert found.spec.kind == kind and "'out'" in found.reason
    if kind == "classification":
        assert found.spec.scores == detail
    if kind == "detection":
        assert found.spec.layout == detail


def test_unit_norm_rows_are_an_embedding():
    e = np.random.default_rng(0).normal(size=(8, 64))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert infer_task(["e"], [e]).spec.kind == "embedding"


@given(st.sampled_from(KINDS))
def test_every_kind_has_a_gate_that_passes_on_identical_outputs(kind):
    spec = TaskSpec(kind)
    samples = {
        "classification": np.eye(3)[[0, 1, 2, 1]],
        "detection": _yolo_head([(50, 50, 20, 20)], [[0.9]]),
        "dense": np.full((2, 1, 4, 4), 0.8),
        "ctc": _ctc_probs([[1, 0, 2]]),
        "token_classification": _ctc_probs([[1, 0, 2]]),
        "embedding": np.eye(4) + 0.1,
        "regression": np.ones((4, 2)),
        "custom": np.ones((2, 2)),
    }[kind]
    assert gate(spec, task_metrics(spec, samples, samples.copy()), budgets_for(spec)).passed


def test_gate_without_budgets_says_what_decides() -> None:
    """A classifier compiled with labels has no top-1 agreement budget (accuracy against FP32 decides, in the
    compiler's selection): its gate line must say so, not call it a custom task without a metric hook."""
    from tandem.tasks.metrics import gate

    classifier = gate(TaskSpec("classification"), {"accuracy": 0.97, "top1_agreement": 0.99}, {})
    assert classifier.passed and "--max-accuracy-drop" in classifier.reason and "custom" not in classifier.reason
    custom = gate(TaskSpec("custom"), {}, {})
    assert custom.passed and "metric hook" in custom.reason
