"""bench/hybrid.py on the digits models: the side-by-side's targets, the sweep's structure, and that a
policy which never falls back cannot pass (the cloud model is clearly stronger than the edge)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tandem.sim.sidebyside import judge_side_by_side, summarize_mode

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_hybrid", ROOT / "bench" / "hybrid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


hybrid = _load_bench()


@pytest.mark.slow
def test_compiled_digits_variants_reach_cloud_accuracy_at_the_default_threshold(digits_dir, tmp_path):
    # cpu-x86 and npu-litert: an FP32 (or FP16/INT8) ONNX Runtime variant and the LiteRT INT8 one
    report = hybrid.run(digits_dir, tmp_path, profiles=["cpu-x86", "npu-litert"], say=lambda m: None)
    json.dumps(report)  # --json must be able to print it
    assert report["split"] == "test" and report["samples"] == len(np.load(digits_dir / "test.npz")["y"])
    assert report["agent_default_kind"] == "max_prob"
    variants = {e["variant"]: e for e in report["edges"]}
    assert "litert-int8" in variants, sorted(variants)
    for edge in report["edges"]:
        assert edge["profiles"] and set(edge["kinds"]) == {"max_prob", "margin", "entropy"}
        lo, hi = sorted((edge["edge_accuracy"], edge["cloud_accuracy"]))
        for kind, res in edge["kinds"].items():
            points = res["sweep"]
            assert [p["threshold"] for p in points] == sorted(p["threshold"] for p in points)
            assert sum(p["default"] for p in points) == 1 and res["default"]["threshold"] == res["default_threshold"]
            fallbacks = [p["fallback_fraction"] for p in points]
            assert fallbacks == sorted(fallbacks), (kind, fallbacks)  # higher threshold, more fallback
            assert points[0]["threshold"] == 0.0 and fallbacks[0] == 0.0
            assert points[0]["hybrid_accuracy"] == edge["edge_accuracy"]
            assert lo - 1e-9 <= res["default"]["hybrid_accuracy"] <= hi + 1e-9, (edge["variant"], kind, res["default"])
        # a policy that never falls back (threshold 0) is the edge alone: it must miss the target
        assert edge["edge_gap_to_cloud_points"] >= 1.5, edge["edge_gap_to_cloud_points"]
        assert all(not res["sweep"][0]["meets_target"] for res in edge["kinds"].values())
        # the target, at the agent's default policy and threshold
        target = report["targets"]["default_threshold_within_0.5_points_of_cloud_with_fallback_le_0.25"]
        assert target[edge["variant"]]["met"], (edge["variant"], target[edge["variant"]])
        assert target[edge["variant"]]["fallback_fraction"] > 0.0
    # the side-by-side: the same requests edge-only, cloud-only, hybrid (issue 24's targets)
    sbs = report["side_by_side"]
    modes = sbs["modes"]
    assert list(modes) == ["edge-only", "cloud-only", "hybrid"] and sbs["requests"] == report["samples"]
    assert modes["edge-only"]["hub_calls_per_1000"] == 0 and modes["edge-only"]["bytes_sent"] == 0
    assert (
        modes["cloud-only"]["hub_calls_per_1000"] == 1000
        and modes["cloud-only"]["bytes_sent"] == sbs["requests"] * sbs["request_bytes"]
    )
    assert 0 < modes["hybrid"]["bytes_sent"] < modes["cloud-only"]["bytes_sent"]
    # on the same requests, falling back buys accuracy the edge alone lacks: at least the 1.5 points the
    # cloud must win by less the 0.3 the hybrid may trail it (a policy that never falls back gains 0)
    gain = (modes["hybrid"]["accuracy"] - modes["edge-only"]["accuracy"]) * 100.0
    assert gain >= 1.2 - 1e-9, (gain, modes)
    assert sbs["policy"]["source"] == "calibration"  # the compiled threshold, as the agent would use it
    assert {k: t["met"] for k, t in sbs["targets"].items() if k != "met"} == dict.fromkeys(
        [
            "cloud_beats_edge_by_1.5_points",
            "hybrid_within_0.3_points_of_cloud",
            "hybrid_fallback_le_0.10",
            "hybrid_p50_within_1.2x_of_edge_only",
        ],
        True,
    ), sbs["targets"]
    assert report["targets"]["met"]


def _mode(acc: float, p50: float, calls: int, n: int = 1000) -> dict:
    labels = np.zeros(n, np.int64)
    predicted = np.where(np.arange(n) < round(acc * n), 0, 1)
    return summarize_mode(labels, predicted, [p50] * n, calls, calls * 354)


def test_side_by_side_targets_refuse_a_hybrid_that_never_falls_back_or_always_does():
    edge, cloud = _mode(0.960, 0.03, 0), _mode(0.985, 0.8, 1000)
    good = judge_side_by_side({"edge-only": edge, "cloud-only": cloud, "hybrid": _mode(0.983, 0.033, 80)})
    assert good["met"], good
    never = judge_side_by_side({"edge-only": edge, "cloud-only": cloud, "hybrid": edge})
    assert not never["met"] and not never["hybrid_within_0.3_points_of_cloud"]["met"]
    assert never["hybrid_within_0.3_points_of_cloud"]["points"] == pytest.approx(2.5)
    always = judge_side_by_side({"edge-only": edge, "cloud-only": cloud, "hybrid": _mode(0.985, 0.8, 1000)})
    assert not always["hybrid_fallback_le_0.10"]["met"] and not always["hybrid_p50_within_1.2x_of_edge_only"]["met"]
    weak_cloud = judge_side_by_side(
        {"edge-only": edge, "cloud-only": _mode(0.965, 0.8, 1000), "hybrid": _mode(0.965, 0.033, 80)}
    )
    assert not weak_cloud["cloud_beats_edge_by_1.5_points"]["met"]


def test_sweep_marks_the_manifest_threshold_as_the_default():
    labels = np.array([0, 1, 1, 0])
    edge = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]], np.float32)  # rows 1 and 3 wrong
    cloud = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    result = hybrid.sweep(edge, cloud, labels, manifest_task={"threshold": 0.85}, thresholds=[0.0, 0.7])
    assert (
        result["edge_accuracy"] == 0.5
        and result["cloud_accuracy"] == 1.0
        and result["edge_gap_to_cloud_points"] == 50.0
    )
    mp = result["kinds"]["max_prob"]
    assert mp["default_threshold"] == 0.85
    by_t = {p["threshold"]: p for p in mp["sweep"]}
    assert set(by_t) == {0.0, 0.7, 0.85} and by_t[0.85]["default"] and not by_t[0.7]["default"]
    assert by_t[0.7]["fallback_fraction"] == 0.5 and by_t[0.7]["hybrid_accuracy"] == 1.0
    assert by_t[0.85]["fallback_fraction"] == 0.75 and by_t[0.85]["meets_target"] is False  # > 25% fallback
    # no manifest threshold: the policy's own default
    plain = hybrid.sweep(edge, cloud, labels, thresholds=[0.5])
    assert plain["kinds"]["margin"]["default_threshold"] == hybrid.ConfidencePolicy("margin").threshold


def test_cli_json_on_fp32_models_keeps_progress_on_stderr(digits_dir):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "hybrid.py"),
            "--json",
            "--fp32",
            "--digits-dir",
            str(digits_dir),
            "--thresholds",
            "0.5,0.9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    (edge,) = report["edges"]
    assert edge["variant"] == "edge.onnx" and report["cloud"]["variant"] == "cloud.onnx"
    assert [p["threshold"] for p in edge["kinds"]["max_prob"]["sweep"]] == [0.5, 0.8, 0.9]
    bad = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hybrid.py"), "--thresholds", "0.5,2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "thresholds must be numbers in [0, 1]" in bad.stderr


def test_demo_summary_leads_with_the_side_by_side():
    from tandem.sim.demo import format_summary

    edge, cloud, mixed = _mode(0.960, 0.03, 0), _mode(0.985, 0.8, 1000), _mode(0.983, 0.033, 80)
    modes = {"edge-only": edge, "cloud-only": cloud, "hybrid": mixed}
    sbs = {
        "requests": 1000,
        "edge_variant": "onnxruntime-fp32",
        "profile": "cpu-x86",
        "hub_model": "digits-cloud",
        "hub_variant": "onnxruntime-int8",
        "policy": {"kind": "max_prob", "threshold": 0.77, "source": "calibration"},
        "request_bytes": 354,
        "modes": modes,
        "targets": judge_side_by_side(modes),
    }
    text = format_summary(
        {
            "seconds": 90.0,
            "edge_report": "e/report.md",
            "cloud_report": "c/report.md",
            "variants": {},
            "chosen": {},
            "side_by_side": sbs,
        }
    )
    first = text.index("What the hybrid buys")
    assert first < text.index("compiled into these variants")
    lines = text[first:].splitlines()[:6]
    rows = {line.split()[0]: line.split() for line in lines if line.strip()}
    assert rows["edge-only"][1] == "96.00%" and rows["cloud-only"][1] == "98.50%" and rows["hybrid"][1] == "98.30%"
    assert rows["hybrid"][4] == "80.0" and rows["hybrid"][5] == str(80 * 354)  # hub calls per 1,000, bytes sent
