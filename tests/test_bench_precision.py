"""bench/precision.py: its ratio arithmetic, and a --quick run on the PP-OCR classifier (JSON shape,
the cpu-x86 choice against OpenVINO f32, INT8 against each runtime's FP32, LiteRT's file ratio)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("tandem_bench_precision", ROOT / "bench" / "precision.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_is_per_round_then_median_and_range():
    # slow/fast per round: 2.0, 3.0, 2.5 -> median 2.5, range 2.0-3.0 (not the ratio of the medians)
    assert _bench().ratio([2.0, 9.0, 5.0], [1.0, 3.0, 2.0]) == {"median": 2.5, "min": 2.0, "max": 3.0}


@pytest.mark.slow
def test_bench_quick_json_on_the_ocr_classifier(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "precision.py"), "--quick", "--json", "--models", "ocr-cls"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # progress stays on stderr
    assert {"host", "host_features", "load_average", "rounds", "models"} <= set(report)
    (model,) = report["models"]
    choice = model["choices"]["cpu-x86"]
    assert choice["chosen"] in model["variants"]
    assert set(choice["speedup_vs_openvino_f32_dynamic"]) == {"median", "min", "max"}
    int8 = model["int8_vs_fp32"]
    assert {"openvino-int8-nncf", "litert-int8"} <= set(int8)
    assert all(r["vs"].endswith("fp32") and set(r["speedup"]) == {"median", "min", "max"} for r in int8.values())
    assert int8["litert-int8"]["file_ratio"] <= 0.40
