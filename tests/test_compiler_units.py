"""Pure parts of the compiler: data checks, per-profile choice, drift bins."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.hardware_profiles import load_profiles
from tandem.model_compiler.data import load_dataset
from tandem.model_compiler.errors import CalibrationDataError
from tandem.model_compiler.select import Candidate, choose_for_profile
from tandem.protocols.drift import bin_counts, confidence_counts, reference_edges
from tandem.protocols.manifest import TensorSpec

SPEC = [TensorSpec("input", "float32", [-1, 64])]


def test_dataset_accepts_x_and_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 64), np.float64), y=np.arange(5))
    ds = load_dataset(tmp_path / "d.npz", SPEC, "validation")
    assert len(ds) == 5 and ds.inputs["input"].dtype == np.float32 and ds.labels.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((5, 63), np.float32)}, "differs from the model's"),
        ({"x": np.zeros((5, 8, 8), np.float32)}, "rank 3"),
        ({"x": np.zeros((5, 64), np.int32)}, "dtype int32"),
        ({"other": np.zeros((5, 64), np.float32)}, "no array for model input"),
        ({"x": np.full((5, 64), np.nan, np.float32)}, "NaN"),
        ({"x": np.zeros((5, 64), np.float32), "y": np.zeros(4)}, "'y' must be 5 integer labels"),
    ],
)
def test_dataset_errors_say_what_is_wrong(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(CalibrationDataError, match=message):
        load_dataset(tmp_path / "d.npz", SPEC, "calibration")


def test_dataset_not_an_npz(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(CalibrationDataError, match="not a readable .npz"):
        load_dataset(tmp_path / "d.npz", SPEC, "calibration")


def cand(vid, runtime, precision, p50, acc=0.97, size=1000):
    return Candidate(
        vid, runtime, precision, {"latency_p50_ms": p50, "accuracy": acc, "agreement": 0.99, "file_bytes": size}
    )


def test_cpu_profile_picks_fastest_within_budget():
    profile = load_profiles()["cpu-x86"]
    cands = [
        cand("ort-fp32", "onnxruntime", "fp32", 1.0),
        cand("ort-int8", "onnxruntime", "int8", 0.5, acc=0.90),
        cand("ov-int8", "openvino", "int8", 0.7, acc=0.965),
        cand("lite-int8", "litert", "int8", 0.1),
    ]
    choice = choose_for_profile(profile, cands, max_accuracy_drop=1.0, reference_accuracy=0.97)
    assert choice.chosen == "ov-int8"
    assert choice.candidates == ["ov-int8", "ort-fp32"]  # litert is not a cpu-x86 runtime
    assert any(s["variant"] == "ort-int8" and "quality drop 7.00" in s["reason"] for s in choice.skipped)


def test_accelerator_profile_prefers_its_precision_and_respects_size():
    profile = load_profiles()["npu-litert"]
    cands = [cand("lite-fp32", "litert", "fp32", 0.1), cand("lite-int8", "litert", "int8", 0.3)]
    assert choose_for_profile(profile, cands, max_accuracy_drop=1, reference_accuracy=0.97).chosen == "lite-int8"
    big = [cand("lite-int8", "litert", "int8", 0.3, size=50 * 2**20)]
    choice = choose_for_profile(profile, big, max_accuracy_drop=1, reference_accuracy=0.97)
    assert choice.chosen is None and "MiB > profile budget" in choice.skipped[0]["reason"]


def test_drift_bins_cover_every_value():
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000)
    edges = reference_edges(values, 10)
    counts = bin_counts(values, edges)
    assert len(counts) == len(edges) + 1 == 10 and sum(counts) == 1000
    assert max(counts) - min(counts) <= 5  # quantile edges: near-equal mass
    assert sum(bin_counts(values + 100, edges)[-1:]) == 1000  # a shift lands in the open outer bin
    conf = confidence_counts(np.array([0.0, 0.5, 0.999, 1.0, 1.5]))
    assert len(conf) == 20 and sum(conf) == 5 and conf[19] == 3
