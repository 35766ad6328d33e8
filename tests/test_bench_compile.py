"""bench/compile.py: a --quick run on the digits edge model (JSON shape, numbers each precision
must show), and its target accounting (a skipped or failed INT8 recipe is a miss)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.model_compiler.host import read_host

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_json_on_digits_edge(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "compile.py"),
            "--quick",
            "--json",
            "--models",
            "digits-edge",
            "--runtimes",
            "onnxruntime,openvino",
            "--profiles",
            "host,cpu-x86",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,  # ~150 s on a loaded 2-core VM
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # progress must stay on stderr
    assert "[bench]" in proc.stderr
    assert report["quick"] is True and report["host"] == read_host().summary()
    (model,) = report["models"]
    assert model["model"] == "digits-edge" and model["input_shape"] == [1, 64]
    rows = {v["recipe"]: v for v in model["variants"]}
    for recipe in ("onnxruntime-fp32", "onnxruntime-fp16", "openvino-fp32", "openvino-fp16", "openvino-int8-nncf"):
        assert recipe in rows, sorted(rows)
    int8_ids = [r for r in rows if r.startswith("onnxruntime-int8-")]
    assert "onnxruntime-int8-u8s8-rr" in int8_ids  # cpu-x86 lists no VNNI
    for row in rows.values():
        assert "skipped" not in row and "error" not in row, row
        assert row["latency_p50_ms"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"] * 0.999
        assert row["throughput_b8"] > 0 and row["file_bytes"] > 0 and row["weight_bytes"] > 0
        # each precision shows its own error: FP32 is the reference's, FP16 and INT8 really differ
        # from it (a bench that timed the FP32 model under another name would show 0.0)
        if row["precision"] == "fp32":
            assert row["agreement"] == 1.0 and row["max_abs_error"] < 1e-4, row
        elif row["precision"] in ("fp16", "bf16"):  # fp16 measured 7e-4 (ORT) and 7e-3 (OpenVINO)
            # bf16 (OpenVINO on an AMX/AVX512-BF16 host only) keeps 8 mantissa bits: 0 < error < 0.05 too
            assert row["agreement"] >= 0.99 and 0.0 < row["max_abs_error"] < 0.05, row
        else:  # int8: measured 0.02-0.1 on softmax outputs
            assert row["precision"] == "int8" and 0.0 < row["max_abs_error"] < 0.5, row
    fp32 = rows["onnxruntime-fp32"]
    assert fp32["agreement"] == 1.0 and fp32["max_abs_error"] < 1e-5
    for rid in int8_ids + ["openvino-int8-nncf"]:
        assert rows[rid]["agreement"] >= 0.99, (rid, rows[rid]["agreement"])
        ratio = model["ratios"][f"{rid}/fp32"]
        assert {"file_bytes", "weight_bytes", "latency_p50", "throughput_b8"} <= set(ratio)
        assert 0 < ratio["weight_bytes"] <= 0.3
        assert ratio["weight_bytes"] == pytest.approx(
            rows[rid]["weight_bytes"] / rows[rid.split("-")[0] + "-fp32"]["weight_bytes"], abs=1e-3
        )
    assert model["ratios"]["onnxruntime-fp16/fp32"]["weight_bytes"] == pytest.approx(0.5, abs=0.01)
    targets = report["targets"]
    built_int8 = {f"digits-edge:{r}" for r in int8_ids + ["openvino-int8-nncf"]}
    assert set(targets["digits_int8_agreement_ge_0.99"]) == built_int8  # every INT8 recipe is accounted for
    assert all(v["ok"] for v in targets["digits_int8_agreement_ge_0.99"].values())
    assert {k.removesuffix("/fp32") for k in targets["int8_weight_ratio_le_0.3"]} == built_int8
    assert all(v["ok"] for v in targets["int8_weight_ratio_le_0.3"].values())


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_compile", ROOT / "bench" / "compile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_skipped_or_failed_int8_recipe_is_a_missed_target():
    bench = _bench_module()
    fp32 = {
        "runtime": "onnxruntime",
        "recipe": "onnxruntime-fp32",
        "precision": "fp32",
        "agreement": 1.0,
        "latency_p50_ms": 1.0,
        "latency_p50_best_ms": 1.0,
        "throughput_b8": 100.0,
        "throughput_b8_best": 100.0,
        "file_bytes": 1000,
        "weight_bytes": 1000,
    }
    good = {**fp32, "recipe": "onnxruntime-int8-u8s8", "precision": "int8", "agreement": 0.995, "weight_bytes": 260}
    failed = {"runtime": "onnxruntime", "recipe": "onnxruntime-int8-s8s8", "precision": "int8", "error": "Fail: boom"}
    skipped = {"runtime": "openvino", "recipe": "openvino-int8-nncf", "precision": "int8", "skipped": "nncf missing"}
    rows = [fp32, good, failed, skipped]
    model = {"model": "digits-edge", "variants": rows, "ratios": bench.ratios(rows)}
    t = bench.targets([model])
    assert t["int8_weight_ratio_le_0.3"]["digits-edge:onnxruntime-int8-u8s8/fp32"] == {"ratio": 0.26, "ok": True}
    assert t["int8_weight_ratio_le_0.3"]["digits-edge:onnxruntime-int8-s8s8/fp32"] == {
        "ratio": None,
        "ok": False,
        "missing": "Fail: boom",
    }
    assert t["digits_int8_agreement_ge_0.99"]["digits-edge:openvino-int8-nncf"] == {
        "agreement": None,
        "ok": False,
        "missing": "nncf missing",
    }
    # every INT8 build failed: the targets are missed, and the table says so
    only_failed = {"model": "digits-edge", "variants": [fp32, failed], "ratios": bench.ratios([fp32, failed])}
    none_built = {"model": "digits-cloud", "variants": [fp32], "ratios": bench.ratios([fp32])}
    report = {"host": "h", "models": [], "unavailable": {}, "targets": bench.targets([only_failed, none_built])}
    lines = bench.table(report)
    assert "INT8 weights <= 0.3x FP32: missed by digits-edge:onnxruntime-int8-s8s8/fp32 (Fail: boom)" in lines
    assert "digits-cloud:int8 (no INT8 recipe was built)" in lines
    assert "top-1 agreement >= 0.99: all" not in lines
