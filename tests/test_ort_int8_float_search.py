"""ONNX Runtime INT8 with SEARCH_OPTIONS: the Add/Mul chains are quantized except the tensors a
sensitivity search finds costing the task gate (issue 20, "INT8 that pays"). A model built here has
one chain whose middle tensor spans 1000x the range of three of its four channels (quantizing it
erases them) and one harmless chain with a Relu the quantizer folds into a Q: the search must leave
exactly the first tensor float, and the result must pass a gate the all-chains variant fails."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.validate import Task, compare_outputs
from tandem.model_compiler.variants import BuildContext, get_builder
from tandem.model_compiler.variants.onnxruntime import CHAIN_OPTIONS, SEARCH_OPTIONS
from tandem.model_compiler.variants.ort_float_search import chain_candidates
from tandem.model_compiler.variants.ort_qdq_graph import float_source, qdq_pairs, unquantize
from tandem.model_compiler.variants.ort_sensitivity import Candidate, SearchFailed, search
from tandem.tasks import TaskSpec
from tandem.tasks.metrics import budgets_for


def _model(path, rng: np.random.Generator) -> None:
    """conv1 -> Tanh -> *up -> *down (channel 3 x1000 in between) -> conv2 -> +1 -> Relu -> *0.5 -> conv3 -> Sigmoid."""
    up = np.array([1.0, 1.0, 1.0, 1000.0], np.float32).reshape(1, 4, 1, 1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5, "w1"),
        numpy_helper.from_array(up, "up"),
        numpy_helper.from_array((1.0 / up).astype(np.float32), "down"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.5, "w2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32) * 3, "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        # a Tanh between: ORT's pre-processing cannot fold the Muls into conv1
        helper.make_node("Tanh", ["c1"], ["t1"], name="tanh"),
        helper.make_node("Mul", ["t1", "up"], ["wide"], name="mul_up"),
        helper.make_node("Mul", ["wide", "down"], ["narrow"], name="mul_down"),
        helper.make_node("Conv", ["narrow", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "one"], ["shifted"], name="add_one"),
        helper.make_node("Relu", ["shifted"], ["relu"], name="relu"),
        helper.make_node("Mul", ["relu", "half"], ["halved"], name="mul_half"),
        helper.make_node("Conv", ["halved", "w3"], ["c3"], name="conv3"),
        helper.make_node("Sigmoid", ["c3"], ["y"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "sensitive",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 1, 8, 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _build(tmp_path, src, calib, options, task):
    builder = get_builder("onnxruntime")
    vnni = dataclasses.replace(get_profile("cpu-x86"), cpu_features=("avx2", "avx512_vnni"))
    plain = next(r for r in builder.recipes(vnni) if r.precision == "int8")
    base = {k: v for k, v in plain.options.items() if k != "float_search"}  # VNNI's default searches
    recipe = dataclasses.replace(plain, id=f"{plain.id}-x", options={**base, **options})
    out = tmp_path / ("searched" if "float_search" in options else "chains")
    return builder.build(recipe, BuildContext(model_path=src, calib=calib, out_dir=out, task=task))


def _mask_iou(task, src, built, x):
    want = load_session("onnxruntime", src).run({"x": x})
    got = load_session("onnxruntime", built.files[0]).run({"x": x})
    return compare_outputs(task, want, got, None)


def test_search_leaves_the_sensitive_tensor_float_and_passes_the_gate_all_chains_fails(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "m.onnx"
    _model(src, rng)
    calib = {"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32)}
    held_out = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    task = Task(TaskSpec("dense"), 0, budgets_for(TaskSpec("dense")))
    chains = _build(tmp_path, src, calib, CHAIN_OPTIONS, task)
    searched = _build(tmp_path, src, calib, SEARCH_OPTIONS, task)
    pairs = qdq_pairs(onnx.load(str(searched.files[0])))
    assert "wide" not in pairs  # the tensor that spans 1000x stays float ...
    assert "shifted" in pairs or "relu" in pairs  # ... the harmless chain stays quantized
    assert "wide" in qdq_pairs(onnx.load(str(chains.files[0])))
    assert any("left float: wide" in note for note in searched.notes), searched.notes
    bad, good = _mask_iou(task, src, chains, held_out), _mask_iou(task, src, searched, held_out)
    assert bad["task_gate"] == "fail", bad["task_reason"]
    assert good["task_gate"] == "pass" and good["task_margin"] > 0.02, good["task_reason"]


def test_unquantizing_every_tensor_puts_the_folded_relu_back(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "m.onnx"
    _model(src, rng)
    calib = {"x": rng.standard_normal((16, 3, 8, 8)).astype(np.float32)}
    built = _build(tmp_path, src, calib, CHAIN_OPTIONS, None)
    qdq = onnx.load(str(built.files[0]))
    assert "Relu" not in {n.op_type for n in qdq.graph.node}  # folded into the Q of its output
    model = onnx.load(str(src))
    source = float_source(qdq, model)
    assert list(source.activations) == ["relu"]
    chain = [t for t in qdq_pairs(qdq) if t in ("t1", "wide", "relu")]
    floated = unquantize(qdq, chain, source)
    assert "Relu" in {n.op_type for n in floated.graph.node}
    path = tmp_path / "floated.onnx"
    onnx.save(floated, str(path))
    x = calib["x"][:4]
    want = load_session("onnxruntime", src).run({"x": x})[0]
    got = load_session("onnxruntime", path).run({"x": x})[0]
    without = tmp_path / "no-relu.onnx"
    onnx.save(unquantize(qdq, chain), str(without))
    lost = load_session("onnxruntime", without).run({"x": x})[0]
    assert np.abs(got - want).max() < np.abs(lost - want).max() / 2


def test_search_without_a_task_gate_quantizes_every_chain_and_says_so(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "m.onnx"
    _model(src, rng)
    calib = {"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)}
    built = _build(tmp_path, src, calib, SEARCH_OPTIONS, None)
    assert any("search skipped: no task budget" in note for note in built.notes), built.notes
    assert "wide" in qdq_pairs(onnx.load(str(built.files[0])))


# -- the pure search, with a fake metric --------------------------------------------------------

COST = {"a1": 0.001, "a2": 0.03, "b1": 0.002, "c1": 0.0005}  # what quantizing each tensor costs


def _margin(floated: frozenset[str]) -> float:
    return 0.04 - sum(cost for t, cost in COST.items() if t not in floated) - 0.0005


def test_search_floats_the_costliest_tensor_only():
    cands = [Candidate("A", ("a1", "a2")), Candidate("B", ("b1",)), Candidate("C", ("c1",))]
    got = search(cands, _margin, share=0.25)
    assert got.float_tensors == ["a2"]
    assert got.margin >= got.required > 0 and not got.ran_out_of_time


def test_search_falls_back_to_whole_groups_when_time_runs_out():
    ticks = iter(range(1000))
    cands = [Candidate("A", ("a1", "a2")), Candidate("B", ("b1",)), Candidate("C", ("c1",))]
    got = search(cands, _margin, share=0.25, seconds=2, clock=lambda: float(next(ticks)))
    assert got.ran_out_of_time and got.margin >= got.required
    assert "a2" in got.float_tensors and all("fallback" in got.why[t] for t in got.float_tensors if t != "a2")


def test_search_gives_up_when_float_chains_do_not_pass_either():
    with pytest.raises(SearchFailed, match="even with all 2"):
        search([Candidate("A", ("a1", "a2"))], lambda floated: -0.1)


@pytest.mark.slow
def test_real_det_chains_pass_and_every_chain_tensor_comes_back_float_with_its_clip(tmp_path, ocr_det_model):
    """PP-OCRv4 det: the search keeps the gate on held-out pages; un-quantizing all 100+ chain tensors
    gives back the folded HardSwish Clips (without them the mask IoU was 0.02 on the calibration set)."""
    from make_data import make_det_data

    from tandem.model_compiler.model_io import load_model, prepare_model

    prepared = tmp_path / "det.onnx"
    prepare_model(load_model(ocr_det_model), prepared)
    pages = make_det_data(16, seed=7, size=160)
    calib, held_out = {"x": pages[:8]}, pages[8:]
    task = Task(TaskSpec("dense"), 0, budgets_for(TaskSpec("dense")))
    searched = _build(tmp_path, prepared, calib, SEARCH_OPTIONS, task)
    assert any("sensitivity search" in note for note in searched.notes), searched.notes
    assert _mask_iou(task, prepared, searched, held_out)["task_gate"] == "pass"
    qdq = onnx.load(str(searched.files[0]))
    source = float_source(qdq, onnx.load(str(prepared)))
    assert sum(1 for a in source.activations.values() if a.node.op_type == "Clip") >= 20
    chain = [t for cand in chain_candidates(qdq) for t in cand.tensors]
    assert len(chain) > 100
    with_clips, without = tmp_path / "float.onnx", tmp_path / "no-clips.onnx"
    onnx.save(unquantize(qdq, chain, source), str(with_clips))
    onnx.save(unquantize(qdq, chain), str(without))
    x = held_out
    want = load_session("onnxruntime", prepared).run({"x": x})[0]
    restored = np.abs(load_session("onnxruntime", with_clips).run({"x": x})[0] - want).mean()
    broken = np.abs(load_session("onnxruntime", without).run({"x": x})[0] - want).mean()
    assert restored < broken / 5, (restored, broken)
