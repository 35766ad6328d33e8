"""Smoke run of bench/compile.py --quick on the digits edge model: JSON shape and sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_json_on_digits_edge(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compile.py"), "--quick", "--json", "--models", "digits-edge",
         "--runtimes", "onnxruntime,openvino", "--profiles", "host,cpu-x86"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # progress must stay on stderr
    assert "[bench]" in proc.stderr
    assert report["quick"] is True and report["host"].startswith(report["host"].split()[0])
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
        assert 0.0 <= row["agreement"] <= 1.0 and row["max_abs_error"] >= 0.0
    fp32 = rows["onnxruntime-fp32"]
    assert fp32["agreement"] == 1.0 and fp32["max_abs_error"] < 1e-5
    for rid in int8_ids + ["openvino-int8-nncf"]:
        assert rows[rid]["agreement"] >= 0.99, (rid, rows[rid]["agreement"])
        ratio = model["ratios"][f"{rid}/fp32"]
        assert {"file_bytes", "weight_bytes", "latency_p50", "throughput_b8"} <= set(ratio)
        assert 0 < ratio["weight_bytes"] <= 0.3
        assert ratio["weight_bytes"] == pytest.approx(rows[rid]["weight_bytes"] / rows[rid.split("-")[0] + "-fp32"]["weight_bytes"], abs=1e-3)
    assert model["ratios"]["onnxruntime-fp16/fp32"]["weight_bytes"] == pytest.approx(0.5, abs=0.01)
    targets = report["targets"]
    assert all(v["ok"] for v in targets["digits_int8_agreement_ge_0.99"].values())
