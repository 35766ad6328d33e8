"""A token classifier (a BERT-style NER/POS tagger: int64 token ids [N, T] and an attention mask in, [N, T, classes]
softmax out) is read as per-token classification, not CTC: its gate counts every token's top-1 against FP32, so a
variant that flips tokens fails it. Read as CTC (repeats collapsed, class 0 dropped as the blank), a flip of a
token into class 0 after a token of the same class was invisible (the sequences below are built that way)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile_fixtures import ORT_FP32, compile_for_profile, write_profile
from tandem.edge_agent.policy import TaskPolicy, task_policy_for
from tandem.model_compiler.cli import main as compile_cli
from tandem.model_compiler.errors import CompileError
from tandem.model_compiler.validate import Task, compare_outputs
from tandem.tasks import TaskSpec, budgets_for, task_confidence, task_metrics

VOCAB, DIM, CLASSES, T = 12, 8, 4, 10


def _tagger(path: Path, flipped: tuple[int, ...] = ()) -> Path:
    """Gather(embedding, ids) -> MatMul -> + mask * 0.5 (the same for every class) -> Softmax over classes.
    Token id i is tagged class i % CLASSES; the ids in `flipped` are tagged class 0 instead."""
    emb = np.zeros((VOCAB, DIM), np.float32)
    for i in range(VOCAB):
        emb[i, i % DIM] = 1.0
    w = np.zeros((DIM, CLASSES), np.float32)
    for i in range(VOCAB):  # 8 dims carry 12 ids: id i and i+8 share a dim and a class (i % 4 == (i+8) % 4)
        w[i % DIM, i % CLASSES] = 4.0
    if flipped:
        emb = np.concatenate([emb, np.zeros((VOCAB, 1), np.float32)], axis=1)
        w = np.concatenate([w, np.zeros((1, CLASSES), np.float32)], axis=0)
        for i in flipped:
            emb[i] = 0.0
            emb[i, DIM] = 1.0
        w[DIM, 0] = 4.0
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["z"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "last"], ["m3"]),
        helper.make_node("Mul", ["m3", "half"], ["shift"]),
        helper.make_node("Add", ["z", "shift"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tagger",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", "seq", CLASSES])],
        [
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.full(CLASSES, 0.5, np.float32), "half"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# Ids 5, 6, 7 (classes 1, 2, 3) flipped to class 0. Each sequence is pairs (i, i + 4), i in 1..3, of a class
# other than the pair before: reference tags [c, c, ...], the flipped model [c, 0, ...]; CTC reads both as [c, ...].
FLIPPED = (5, 6, 7)


def _data(n: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, T), np.int64)
    for row in ids:
        prev = 0
        for k in range(0, T, 2):
            cls = int(rng.choice([c for c in (1, 2, 3) if c != prev]))
            row[k], row[k + 1], prev = cls, cls + 4, cls
    mask = np.ones((n, T), np.int64)
    mask[: n // 2, T - 2 :] = 0  # half the rows padded at their last pair
    return {"input_ids": ids, "attention_mask": mask}


def _run(path: Path, data: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, data)[0])


def test_flips_are_invisible_to_ctc_but_not_to_the_token_gate(tmp_path: Path) -> None:
    data = _data()
    ref = _run(_tagger(tmp_path / "ref.onnx"), data)
    bad = _run(_tagger(tmp_path / "bad.onnx", FLIPPED), data)
    # the old reading: CTC exact match sees nothing wrong
    ctc = TaskSpec("ctc", step_scores="probabilities")
    assert task_metrics(ctc, ref, bad)["exact_match"] == 1.0
    task = Task(
        TaskSpec("token_classification", mask="attention_mask"), 0, budgets_for(TaskSpec("token_classification"))
    )
    verdict = compare_outputs(task, [ref], [bad], None, inputs=data)
    assert verdict["task_gate"] == "fail" and verdict["task_metric"] == "token_agreement"
    assert verdict["token_agreement"] == pytest.approx(0.5)
    assert verdict["sequence_agreement"] == 0.0
    good = compare_outputs(task, [ref], [ref.copy()], None, inputs=data)
    assert good["task_gate"] == "pass" and good["token_agreement"] == 1.0


def test_mask_and_labels_count_only_real_tokens() -> None:
    data = _data(4)
    ref = np.zeros((4, T, CLASSES), np.float32)
    ref[..., 1] = 1.0
    out = ref.copy()
    out[:2, T - 2 :] = out[:2, T - 2 :, ::-1]  # flips only where rows 0-1 are padded (mask 0)
    spec = TaskSpec("token_classification")
    masked = task_metrics(spec, ref, out, mask=data["attention_mask"])
    assert masked["token_agreement"] == 1.0 and masked["sequence_agreement"] == 1.0
    assert task_metrics(spec, ref, out)["token_agreement"] == pytest.approx(1 - 4 / (4 * T))
    y = np.ones((4, T), np.int64)
    y[3, :5] = 2  # 5 wrong tokens of 36 counted
    y[3, 5] = -100  # not counted
    got = task_metrics(spec, ref, out, labels=y, mask=data["attention_mask"])
    assert got["accuracy"] == pytest.approx(1 - 5 / 35)


def test_confidence_is_the_least_sure_token() -> None:
    out = np.full((2, 3, 2), 0.5, np.float32)
    out[0] = [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]]
    out[1] = [[0.99, 0.01], [0.95, 0.05], [0.03, 0.97]]
    found = task_confidence(TaskSpec("token_classification"), out)
    assert found.confidence is not None
    assert found.confidence.tolist() == pytest.approx([0.6, 0.95])
    assert found.labels.tolist() == [2, 1]  # tokens not tagged class 0
    # the agent reads the manifest's task the same way: the first row (a 0.6 token) goes to the hub
    policy = task_policy_for({"kind": "token_classification", "mask": "attention_mask"}, None, None, "auto")
    assert isinstance(policy, TaskPolicy) and policy.threshold == 0.5
    assert policy.score_array(out, 0.7).confident.tolist() == [False, True]


def test_compile_infers_token_classification_and_gates_by_the_mask(tmp_path: Path) -> None:
    model = _tagger(tmp_path / "tagger.onnx")
    data = _data()
    lines: list[str] = []
    result = compile_for_profile(tmp_path, ORT_FP32, model, data, progress=lines.append)
    task = result.manifest.task
    assert task["kind"] == "token_classification", "\n".join(lines)
    assert task["mask"] == "attention_mask" and task["scores"] == "probabilities"
    assert any("integer input 'input_ids'" in line for line in lines)
    (variant,) = [o for o in result.outcomes if o.built and not o.skipped]
    assert variant.metrics["task_metric"] == "token_agreement" and variant.metrics["task_gate"] == "pass"


def test_stated_task_finds_the_mask_and_takes_labels_per_token(tmp_path: Path) -> None:
    model = _tagger(tmp_path / "tagger.onnx")
    data = _data()
    y = data["input_ids"] % CLASSES
    y[0, 0] = 0  # one token the model gets wrong
    val = {**data, "y": y}
    result = compile_for_profile(tmp_path, ORT_FP32, model, data, val, task=TaskSpec("token_classification"))
    assert result.manifest.task["mask"] == "attention_mask"
    (variant,) = [o for o in result.outcomes if o.built and not o.skipped]
    assert variant.metrics["accuracy"] == pytest.approx(1 - 1 / int(data["attention_mask"].sum()))
    with pytest.raises(CompileError, match="mask=nope"):
        compile_for_profile(
            tmp_path, ORT_FP32, model, data, out=tmp_path / "o2", task=TaskSpec("token_classification", mask="nope")
        )


def test_cli_states_token_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tandem-compile --task token_classification --task-option mask=...`: the CLI takes the kind and its option;
    a mask that is no [N, T] input is refused by name before anything is built."""
    model = _tagger(tmp_path / "tagger.onnx")
    np.savez(tmp_path / "d.npz", **_data(8))
    args = [str(model), "--calib", str(tmp_path / "d.npz"), "--val", str(tmp_path / "d.npz")]
    args += ["--profiles", write_profile(tmp_path, ORT_FP32), "--profile-dir", str(tmp_path / "profiles")]
    args += ["--signing-key", str(tmp_path / "k.pem"), "--no-timing", "--task", "token_classification"]
    assert compile_cli([*args, "--out", str(tmp_path / "bad"), "--task-option", "mask=input_ids2"]) == 2
    assert "--task-option mask=input_ids2: not an [N, 10] input" in capsys.readouterr().err
    assert compile_cli([*args, "--out", str(tmp_path / "o"), "--task-option", "mask=attention_mask"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["task"] == {
        "kind": "token_classification",
        "output": "probs",
        "scores": "probabilities",
        "mask": "attention_mask",
    }
