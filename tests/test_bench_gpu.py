"""bench/gpu.py on this host's CPU-only ONNX Runtime: its dry run on CPUExecutionProvider (JSON
shape, gate, node placement, timing, and the compile's honest "validated on" note), a provider the
installed ORT lacks reported per variant as an error (ORT itself would run it on the CPU), and the
skipped path with its install line. The GPU run itself needs a GPU machine (DEVELOPERS.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
GPU_EPS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
NOTE = "validated on CPUExecutionProvider; not yet on CUDA/TensorRT: run bench/gpu.py on a GPU machine (DEVELOPERS.md)"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("tandem_bench_gpu", ROOT / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """A 16 -> 4 softmax classifier built with onnx.helper, and its calibration/validation data: the
    --model arguments of bench/gpu.py (it has a MatMul, so gpu-cuda gets FP32, FP16 and INT8)."""
    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "tiny.onnx"))
    x = rng.normal(size=(400, 16)).astype(np.float32)
    z = np.sort(x @ w + b, axis=1)
    clear = x[z[:, -1] - z[:, -2] > 1.0][:64]  # validation rows no INT8 rounding can flip: the dry run's
    # figures are about the bench's plumbing, and 1 of 64 rows is already 1.6 points of accuracy
    np.savez(folder / "calib.npz", x=x[:32])
    np.savez(folder / "val.npz", x=clear, y=(clear @ w + b).argmax(axis=1))
    return [
        "--model",
        str(folder / "tiny.onnx"),
        "--calib",
        str(folder / "calib.npz"),
        "--val",
        str(folder / "val.npz"),
    ]


def _run(capsys, argv: list[str]) -> tuple[int, dict[str, Any]]:
    code = _bench().main(argv)
    return code, json.loads(capsys.readouterr().out)  # progress goes to stderr


def test_provider_chain_follows_the_profile_order_and_ends_on_the_cpu():
    provider_chain = _bench().provider_chain  # bench/_gpu_ep.py's, as gpu.py uses it

    profile = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain("TensorrtExecutionProvider", profile) == profile
    assert provider_chain("CUDAExecutionProvider", profile) == profile[1:]
    assert provider_chain("CPUExecutionProvider", profile) == ["CPUExecutionProvider"]
    assert provider_chain("ROCMExecutionProvider", profile) == ["ROCMExecutionProvider", "CPUExecutionProvider"]


def test_dry_run_on_the_cpu_provider_checks_every_gpu_variant_and_says_it_is_not_a_gpu_check(tiny, capsys, tmp_path):
    code, report = _run(
        capsys,
        [*tiny, "--providers", "CPUExecutionProvider", "--json", "--quick", "--rounds", "2", "--keep", str(tmp_path)],
    )
    assert code == 0
    assert "not a GPU check" in report["dry_run"]
    assert report["providers"] == ["CPUExecutionProvider"]
    assert {"host", "onnxruntime", "nvidia_smi"} <= set(report["environment"])
    (model,) = report["models"]
    rows = model["variants"]
    assert {r["precision"] for r in rows} == {"fp32", "fp16", "int8"}
    assert report["summary"] == {"pass": 3, "fail": 0, "error": 0, "regressions": 0}
    assert set(model["baseline"]["latency_ms"]) == {"median", "min", "max"}
    for row in rows:
        assert row["status"] == "pass" and row["ep"] == "CPUExecutionProvider"
        assert row["providers_got"] == ["CPUExecutionProvider"]
        placement = row["placement"]
        assert placement["nodes_total"] > 0 and placement["nodes_on_requested"] == placement["nodes_total"]
        assert row["gate"]["task_gate"] == "pass" and row["gate"]["quality_drop_points"] <= 1.0
        assert row["cpu_gate"]["task_gate"] == "pass"
        assert set(row["speedup_vs_cpu_fp32"]) == {"median", "min", "max"}
    # the compile it ran says where its gpu-cuda variants were validated, in the manifest and the report
    out = tmp_path / "tiny" / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    for variant in manifest["variants"]:
        assert NOTE in variant["options"]["notes"], variant["id"]
        assert variant["metrics"]["validated_on"] == ["CPUExecutionProvider"]
    assert f"- onnxruntime-fp16: {NOTE}" in (out / "report.md").read_text()


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA: not a lacking provider"
)
def test_a_provider_the_session_does_not_get_is_an_error_on_each_variant_never_a_cpu_pass(tiny, capsys):
    # ONNX Runtime runs such a session on the CPU (a warning, no error): the bench must not count it
    code, report = _run(capsys, [*tiny, "--providers", "CUDAExecutionProvider", "--json", "--quick", "--rounds", "1"])
    assert code == 1
    assert report["dry_run"] is False
    rows = report["models"][0]["variants"]
    assert len(rows) == 3 and report["summary"]["error"] == 3
    for row in rows:
        assert row["status"] == "error"
        assert row["error"].startswith("session did not get CUDAExecutionProvider")
        assert "not in available provider names" in row["error"]  # ORT's own words, kept
        assert row["providers_got"] == ["CPUExecutionProvider"]
        assert "gate" not in row and "latency_ms" not in row


@pytest.mark.skipif(bool(GPU_EPS & set(ort.get_available_providers())), reason="this onnxruntime has a GPU provider")
def test_without_a_gpu_provider_it_skips_saying_why_and_how_to_install_one(capsys):
    code, report = _run(capsys, ["--json"])
    assert code == 0
    assert "no GPU execution provider" in report["skipped"]
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]'" in report["skipped"] and "DEVELOPERS.md" in report["skipped"]
    assert "models" not in report
    code, report = _run(capsys, ["--json", "--require-gpu"])
    assert code == 2 and "skipped" in report


def test_validation_note_names_only_the_accelerator_providers_a_variant_did_not_run_on():
    from tandem.model_compiler.report import validation_note

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert validation_note(["CPUExecutionProvider"], gpu) == NOTE
    assert validation_note(["CPUExecutionProvider"], ["CPUExecutionProvider"]) is None  # a CPU profile
    assert validation_note(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider"]) is None
    assert validation_note(None, gpu) is None  # OpenVINO and LiteRT sessions report no providers
    assert validation_note(["CPUExecutionProvider"], ["QNNExecutionProvider"]) == (
        "validated on CPUExecutionProvider; not yet on QNNExecutionProvider: validate it on a device that has them"
    )
