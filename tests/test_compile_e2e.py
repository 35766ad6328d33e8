"""tandem-compile end to end on real models and real runtimes: every profile gets a
validated variant that loads and agrees with the FP32 source model, run again here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.golden import read_golden
from tandem.model_compiler.pipeline import CompileOptions, compile_model
from tandem.protocols.manifest import load_manifest
from tandem.protocols.signing import load_private_key, verify_manifest

ALL_PROFILES = ["cpu-x86", "cpu-arm", "gpu-cuda", "gpu-intel", "npu-intel", "npu-litert"]


def _compile(tmp_path: Path, model: Path, calib: Path, val: Path, profiles=ALL_PROFILES, **kw):
    key = tmp_path / "key.pem"
    opts = CompileOptions(
        model=model,
        profiles=list(profiles),
        calib=calib,
        val=val,
        out=tmp_path / "out",
        signing_key=key,
        timing_seconds=0.2,
        **kw,
    )
    messages: list[str] = []
    result = compile_model(opts, progress=messages.append)
    return result, key, messages


def _check_chosen_variants_agree(out: Path, source: Path, val_x: np.ndarray, min_agreement: float):
    """Each profile's chosen variant, run here, against the source model run here in FP32 by ONNX
    Runtime: top-1 agreement on held-out rows, and the agreement the compiler wrote is that one."""
    manifest = load_manifest(out)
    fp32 = load_session("onnxruntime", source)
    reference = fp32.run({fp32.inputs[0].name: val_x})[0]
    for profile, choice in manifest.profiles.items():
        assert choice.chosen, f"{profile}: nothing chosen ({choice.reason}; skipped: {choice.skipped})"
        variant = manifest.variant(choice.chosen)
        session = load_session(variant.runtime, out / variant.model_file.path, **variant.options.get("session", {}))
        inputs, expected = read_golden(
            out / manifest.golden.file.path, variant.id, [s.name for s in manifest.inputs], len(manifest.outputs)
        )
        got = session.run(inputs)
        assert np.allclose(got[0], expected[0], atol=manifest.golden.atol), (
            f"{variant.id} drifts from its golden outputs"
        )
        outputs = session.run({manifest.inputs[0].name: val_x})[0]
        assert outputs.shape == reference.shape, (variant.id, outputs.shape, reference.shape)
        agreement = float(
            np.mean(outputs.reshape(len(val_x), -1).argmax(axis=1) == reference.reshape(len(val_x), -1).argmax(axis=1))
        )
        assert agreement >= min_agreement, (profile, variant.id, agreement)
        assert variant.metrics["agreement"] == pytest.approx(agreement, abs=0.02), (
            variant.id,
            variant.metrics,
            agreement,
        )


@pytest.mark.slow
def test_digits_edge_compiles_for_every_profile(tmp_path, digits_dir):
    result, key, messages = _compile(
        tmp_path, digits_dir / "edge.onnx", digits_dir / "calib.npz", digits_dir / "val.npz"
    )
    out = result.out
    manifest = load_manifest(out)
    verify_manifest(json.loads((out / "manifest.json").read_text()), load_private_key(key).public_key())
    assert set(manifest.profiles) == set(ALL_PROFILES)
    runtimes = {v.runtime for v in manifest.variants}
    precisions = {v.precision for v in manifest.variants}
    assert {"onnxruntime", "openvino"} <= runtimes and {"fp32", "fp16", "int8"} <= precisions
    for v in manifest.variants:  # every file listed exists with the recorded size
        for f in v.files:
            assert (out / f.path).stat().st_size == f.size
        if v.precision == "int8":
            assert v.metrics["agreement"] >= 0.99, (v.id, v.metrics)
    val = np.load(digits_dir / "val.npz")
    _check_chosen_variants_agree(out, digits_dir / "edge.onnx", val["x"], 0.99)
    ref = manifest.drift_reference
    assert sum(ref["inputs"]["input"]["mean"]["counts"]) == len(val["x"]) == sum(ref["confidence"]["counts"])
    assert len(ref["classes"]["counts"]) == 10
    report = (out / "report.md").read_text()
    assert "| cpu-x86 |" in report and "agreement" in report
    assert any(m.startswith("[1/") for m in messages)  # progress was reported


@pytest.mark.slow
def test_ocr_orientation_classifier_opset11_compiles(tmp_path, ocr_cls_model):
    from make_data import make_cls_data

    x, y = make_cls_data(96, seed=1)
    np.savez(tmp_path / "calib.npz", x=x[:48])
    np.savez(tmp_path / "val.npz", x=x[48:], y=y[48:])
    result, _, messages = _compile(
        tmp_path,
        ocr_cls_model,
        tmp_path / "calib.npz",
        tmp_path / "val.npz",
        profiles=["cpu-x86", "npu-intel"],
        max_accuracy_drop=5.0,
    )
    assert any("opset raised from 11 to 13" in m for m in messages)
    manifest = load_manifest(result.out)
    assert manifest.source["opset"] >= 13
    int8 = [v for v in manifest.variants if v.precision == "int8"]
    assert int8, "no INT8 variant survived"
    fp32_weights = manifest.source["weight_bytes"]
    for v in int8:
        assert v.metrics["weight_bytes"] <= 0.3 * fp32_weights, (v.id, v.metrics["weight_bytes"], fp32_weights)
    _check_chosen_variants_agree(result.out, ocr_cls_model, x[48:], 0.9)
    # every variant timed together in interleaved rounds; reduced precision judged on per-round
    # ratios to its runtime's FP32, which the report shows with their range
    assert all(len(v.metrics["latency_rounds_ms"]) == 5 for v in manifest.variants), manifest.variants
    report = (result.out / "report.md").read_text()
    assert "## Reduced precision against the same runtime's FP32" in report
    assert "| onnxruntime-int8-u8s8" in report and "| onnxruntime-fp32 |" in report
    assert any("interleaved rounds" in m for m in messages)


def test_cli_reports_bad_model_and_bad_data_clearly(tmp_path, digits_dir):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    cmd = [sys.executable, "-m", "tandem.model_compiler.cli"]
    run = subprocess.run(
        cmd
        + [
            str(bad),
            "--calib",
            str(digits_dir / "calib.npz"),
            "--val",
            str(digits_dir / "val.npz"),
            "--out",
            str(tmp_path / "o1"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "not an ONNX model" in run.stderr and "Traceback" not in run.stderr
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 60), np.float32))
    run = subprocess.run(
        cmd
        + [
            str(digits_dir / "edge.onnx"),
            "--calib",
            str(tmp_path / "wrong.npz"),
            "--val",
            str(digits_dir / "val.npz"),
            "--out",
            str(tmp_path / "o2"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "calibration data" in run.stderr and "(4, 60)" in run.stderr
    run = subprocess.run(
        cmd
        + [
            str(digits_dir / "edge.onnx"),
            "--profiles",
            "cpu-x86,npu-nope",
            "--calib",
            str(digits_dir / "calib.npz"),
            "--val",
            str(digits_dir / "val.npz"),
            "--out",
            str(tmp_path / "o3"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "npu-nope" in run.stderr


def test_profile_that_cannot_run_an_op_gets_no_variant(tmp_path):
    """npu-litert lists LSTM as unsupported: a model with an LSTM is refused for it, with the reason."""
    import onnx
    from onnx import TensorProto, helper

    hidden, inp = 4, 3
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 4 * hidden, inp], rng.normal(size=4 * hidden * inp).tolist())
    r = helper.make_tensor(
        "R", TensorProto.FLOAT, [1, 4 * hidden, hidden], rng.normal(size=4 * hidden * hidden).tolist()
    )
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["", "y_h"], hidden_size=hidden)
    flat = helper.make_node("Flatten", ["y_h"], ["flat"], axis=1)
    soft = helper.make_node("Softmax", ["flat"], ["p"], axis=1)
    graph = helper.make_graph(
        [lstm, flat, soft],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, -1, inp])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [-1, hidden])],
        initializer=[w, r],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "batch"
    onnx.save(model, tmp_path / "lstm.onnx")
    x = rng.normal(size=(5, 16, inp)).astype(np.float32)
    # the LSTM input is [seq, batch, feature]: batch is axis 1, so feed one fixed batch per file
    np.savez(tmp_path / "d.npz", x=x)
    result, _, _ = _compile(
        tmp_path,
        tmp_path / "lstm.onnx",
        tmp_path / "d.npz",
        tmp_path / "d.npz",
        profiles=["npu-litert", "cpu-x86"],
        timing=False,
    )
    choices = result.manifest.profiles
    assert choices["npu-litert"].chosen is None and "LSTM" in choices["npu-litert"].reason
    assert choices["cpu-x86"].chosen is not None
