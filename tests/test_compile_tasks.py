"""The compiler's task gate on real models and faithful hand-built ones: each task is inferred
(or stated), its INT8 variant judged by the task's own metric against FP32, and a deliberately
broken INT8 variant (starved calibration: constant inputs) rejected with its figure while the
old element-wise agreement would have let it through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import write_all
from compile_fixtures import ORT_TASKS, write_profile
from tandem.model_compiler.errors import CompileError
from tandem.model_compiler.pipeline import CompileOptions, compile_model
from tandem.tasks import TaskSpec


@pytest.fixture(scope="module")
def task_models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("task-models")
    write_all(out)
    write_profile(out, ORT_TASKS)
    return out


def _compile(tmp: Path, models: Path, model: Path, calib: Path, val: Path, **kw):
    opts = CompileOptions(
        model=model,
        profiles=["ort-tasks"],
        calib=calib,
        val=val,
        out=tmp / "out",
        signing_key=tmp / "key.pem",
        timing=False,
        profile_dirs=[models / "profiles"],
        force=True,
        **kw,
    )
    messages: list[str] = []
    return compile_model(opts, progress=messages.append), messages


def _starved(tmp: Path, like: Path) -> Path:
    """Calibration that sees only constant inputs: activation ranges far too narrow for real data."""
    x = np.load(like)["x"]
    path = tmp / "starved.npz"
    np.savez(path, x=np.full_like(x[:4], float(np.median(x))))
    return path


def _int8(result):
    [variant] = [o for o in result.outcomes if o.recipe.precision == "int8"]
    return variant.metrics


def _rejected(result, profile="ort-tasks"):
    return {s["variant"]: s["reason"] for s in result.manifest.profiles[profile].skipped}


def test_sigmoid_classifier_is_inferred_and_a_starved_int8_is_rejected(tmp_path, task_models):
    m = task_models
    good, messages = _compile(tmp_path, m, m / "sigmoid.onnx", m / "sigmoid_calib.npz", m / "sigmoid_val.npz")
    assert good.manifest.task == {
        "kind": "classification",
        "output": "p",
        "scores": "sigmoid",
        "positive_threshold": 0.5,
    }
    assert any("task: classification" in line and "sigmoid" in line for line in messages)
    assert _int8(good)["task_gate"] == "pass" and _int8(good)["top1_agreement"] >= 0.99
    assert any(c.startswith("onnxruntime-int8") for c in good.manifest.profiles["ort-tasks"].candidates)

    bad, _ = _compile(
        tmp_path, m, m / "sigmoid.onnx", _starved(tmp_path, m / "sigmoid_calib.npz"), m / "sigmoid_val.npz"
    )
    figures = _int8(bad)
    assert figures["task_gate"] == "fail" and figures["top1_agreement"] < 0.9
    [(vid, reason)] = _rejected(bad).items()
    assert vid.startswith("onnxruntime-int8") and f"top1_agreement {figures['top1_agreement']:.4f} misses" in reason
    assert bad.manifest.profiles["ort-tasks"].chosen == "onnxruntime-fp32"


def test_yolo_style_detector_is_gated_on_map_against_fp32_boxes(tmp_path, task_models):
    m = task_models
    good, messages = _compile(tmp_path, m, m / "yolo.onnx", m / "yolo_calib.npz", m / "yolo_val.npz")
    assert good.manifest.task["kind"] == "detection" and good.manifest.task["layout"] == "channels_first"
    assert _int8(good)["task_gate"] == "pass", _int8(good)
    bad, _ = _compile(tmp_path, m, m / "yolo.onnx", _starved(tmp_path, m / "yolo_calib.npz"), m / "yolo_val.npz")
    figures = _int8(bad)
    assert figures["task_gate"] == "fail" and figures["map50"] < 0.9 and "map50" in next(iter(_rejected(bad).values()))
    assert figures["agreement"] > figures["map50"]  # the element-wise figure looks far better than the task is
    assert bad.manifest.profiles["ort-tasks"].chosen == "onnxruntime-fp32"
    report = (bad.out / "report.md").read_text()
    assert "| map50 " in report and "| fail |" in report


@pytest.mark.slow
def test_ppocr_rec_ctc_starved_int8_rejected_though_dense_agreement_is_perfect(tmp_path, task_models, ocr_rec_model):
    from make_data import make_rec_data

    x = make_rec_data(40, seed=5)
    np.savez(tmp_path / "calib.npz", x=x[:16])
    np.savez(tmp_path / "val.npz", x=x[16:])
    result, messages = _compile(
        tmp_path, task_models, ocr_rec_model, _starved(tmp_path, tmp_path / "calib.npz"), tmp_path / "val.npz"
    )
    assert result.manifest.task["kind"] == "ctc" and result.manifest.task["blank"] == 0
    assert any("CTC" in line for line in messages)
    figures = _int8(result)
    assert figures["task_gate"] == "fail" and figures["exact_match"] < 0.9 and figures["cer"] > 0.0
    assert result.manifest.profiles["ort-tasks"].chosen == "onnxruntime-fp32"


@pytest.mark.slow
def test_ppocr_det_dense_map_gated_on_mask_iou(tmp_path, task_models, ocr_det_model):
    from make_data import make_det_data

    x = make_det_data(24, seed=6)
    np.savez(tmp_path / "calib.npz", x=x[:8])
    np.savez(tmp_path / "val.npz", x=x[8:])
    result, _ = _compile(
        tmp_path, task_models, ocr_det_model, _starved(tmp_path, tmp_path / "calib.npz"), tmp_path / "val.npz"
    )
    assert result.manifest.task["kind"] == "dense"
    figures = _int8(result)
    assert figures["task_gate"] == "fail" and figures["mask_iou"] < 0.9, figures
    assert "mask_iou" in next(iter(_rejected(result).values()))


def test_stated_task_that_does_not_fit_the_outputs_is_refused_by_the_cli(tmp_path, task_models):
    m = task_models
    cmd = [
        sys.executable,
        "-m",
        "tandem.model_compiler.cli",
        str(m / "sigmoid.onnx"),
        "--profiles",
        "ort-tasks",
        "--profile-dir",
        str(m / "profiles"),
        "--calib",
        str(m / "sigmoid_calib.npz"),
        "--val",
        str(m / "sigmoid_val.npz"),
        "--signing-key",
        str(tmp_path / "k.pem"),
        "--no-timing",
    ]
    run = subprocess.run(cmd + ["--out", str(tmp_path / "o1"), "--task", "ctc"], capture_output=True, text=True)
    assert run.returncode == 2 and "--task ctc" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run(
        cmd + ["--out", str(tmp_path / "o2"), "--task", "classification", "--task-option", "blank=3"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "blank" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run(cmd + ["--out", str(tmp_path / "o3"), "--budget", "map50=0.9"], capture_output=True, text=True)
    assert run.returncode == 2 and "map50" in run.stderr and "Traceback" not in run.stderr


def test_budget_override_changes_the_verdict(tmp_path, task_models):
    m = task_models
    strict, _ = _compile(
        tmp_path, m, m / "yolo.onnx", m / "yolo_calib.npz", m / "yolo_val.npz", budgets={"map50": 1.01 - 1e-9}
    )
    assert _int8(strict)["task_gate"] == "fail" and _int8(strict)["task_budget"] == pytest.approx(1.01 - 1e-9)
    spec = TaskSpec.from_dict(strict.manifest.task)
    assert spec.kind == "detection" and strict.manifest.source["reference"]["task_budgets"]["map50"] > 1.0


def test_int32_token_classifier_gets_an_int8_variant(tmp_path, task_models):
    m = task_models
    result, _ = _compile(tmp_path, m, m / "tokens.onnx", m / "tokens_calib.npz", m / "tokens_val.npz")
    int8 = [o for o in result.outcomes if o.recipe.precision == "int8"]
    assert int8 and all(o.built and not o.skipped for o in int8), [o.skipped for o in int8]
    figures = int8[0].metrics
    assert figures["task_gate"] == "pass" and figures["top1_agreement"] >= 0.99, figures
    assert figures["weight_bytes"] <= 0.3 * result.manifest.source["weight_bytes"]


def _dynamic_width_model(path: Path) -> Path:
    """x [N, 4, W] (W dynamic) -> ReduceMean over W -> MatMul -> Softmax [N, 3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2], keepdims=0),
        helper.make_node("MatMul", ["m", "W"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "width",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "w"])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])],
        initializer=[w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_litert_variant_advertises_the_shape_it_was_built_for(tmp_path):
    pytest.importorskip("ai_edge_litert")
    model = _dynamic_width_model(tmp_path / "width.onnx")
    x = np.random.default_rng(1).normal(size=(48, 4, 20)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    opts = CompileOptions(
        model=model,
        profiles=["npu-litert", "cpu-x86"],
        calib=tmp_path / "d.npz",
        val=tmp_path / "d.npz",
        out=tmp_path / "out",
        signing_key=tmp_path / "k.pem",
        timing=False,
    )
    manifest = compile_model(opts).manifest
    assert manifest.inputs[0].shape == [-1, 4, -1]  # the model takes any width
    litert = [v for v in manifest.variants if v.runtime == "litert"]
    assert litert, "no LiteRT variant was built"
    for v in litert:
        assert v.inputs[0].shape == [-1, 4, 20], (v.id, v.inputs)  # frozen at the calibration width
        assert any("takes only x [-1, 4, 20]" in n for n in v.options.get("notes", []))
    onnx_variants = [v for v in manifest.variants if v.runtime == "onnxruntime"]
    assert onnx_variants and all(v.inputs[0].shape == [-1, 4, -1] for v in onnx_variants)


def test_stateful_model_with_state_on_axis_1_and_a_scalar_input_compiles(tmp_path, task_models):
    """Calibration, validation and timing slice each input along its own batch axis; the 0-d
    sample rate goes whole with every batch; LiteRT refuses with the reason."""
    m = task_models
    opts = CompileOptions(
        model=m / "stream.onnx",
        profiles=["ort-tasks", "npu-litert"],
        calib=m / "stream_calib.npz",
        val=m / "stream_val.npz",
        out=tmp_path / "out",
        signing_key=tmp_path / "key.pem",
        profile_dirs=[m / "profiles"],
        timing_seconds=0.1,
    )
    result = compile_model(opts)
    assert result.manifest.task["kind"] == "classification" and result.manifest.task["scores"] == "sigmoid"
    built = [o for o in result.outcomes if o.built and not o.skipped]
    assert {o.recipe.precision for o in built} >= {"fp32", "int8"}
    for o in built:
        assert o.outputs[0].shape == (96, 1) and o.outputs[1].shape == (2, 96, 128), o.recipe.id
        assert "latency_p50_ms" in o.metrics and "timing_error" not in o.metrics, o.metrics
    litert = [o for o in result.outcomes if o.recipe.runtime == "litert"]
    assert litert and all(o.skipped and "'state' is batched on axis 1" in o.skipped for o in litert)
    assert result.manifest.profiles["ort-tasks"].chosen is not None


def test_a_detector_whose_validation_data_holds_no_objects_is_refused_not_judged_blind(tmp_path, task_models):
    """With no FP32 box in the validation data, mAP cannot tell a working variant from one that finds
    nothing: seen on nudenet's real YOLOv8 (320n.onnx) fed random images, where every variant, FP32
    included, was 'rejected' at map50 0.0. The compiler refuses with the figure and the fix instead."""
    m = task_models
    with np.load(m / "yolo_val.npz") as z:
        blank = {k: np.zeros_like(v) for k, v in z.items()}  # images without a single object
    np.savez(tmp_path / "blank_val.npz", **blank)
    with pytest.raises(CompileError, match=r"FP32 keeps no box scoring >= 0.25 in any of the \d+ validation"):
        _compile(tmp_path, m, m / "yolo.onnx", m / "yolo_calib.npz", tmp_path / "blank_val.npz")
