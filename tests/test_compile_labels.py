"""`tandem-compile` with validation labels outside the model's classes: one line naming the
offending values and the class count, never a traceback and never a silently wrong accuracy
(a label of -1 would otherwise index the last class)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from agent_fixtures import make_linear_softmax

from tandem.model_compiler.data import check_label_range
from tandem.model_compiler.errors import CalibrationDataError

ROOT = Path(__file__).resolve().parents[1]


def test_labels_in_range_pass_and_out_of_range_ones_are_named():
    check_label_range(np.array([0, 1, 2, 2]), 3, "validation data v.npz")
    with pytest.raises(CalibrationDataError) as err:
        check_label_range(np.array([0, 3, -1, 7, 3]), 3, "validation data v.npz")
    assert "label values -1, 3, 7" in str(err.value) and "3 classes" in str(err.value)


def test_compile_with_labels_out_of_range_is_one_line_naming_them(tmp_path: Path):
    model = make_linear_softmax(tmp_path / "lin.onnx", n_in=4, n_out=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    y = np.array([0, 1, 2, 5] * 3 + [-1, 0, 1, 2], dtype=np.int64)
    np.savez(tmp_path / "val.npz", x=x, y=y)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "tandem.model_compiler.cli", str(model), "--profiles", "cpu-x86"]
        + ["--calib", str(tmp_path / "calib.npz"), "--val", str(tmp_path / "val.npz")]
        + ["--out", str(out), "--no-timing", "--publisher-key", str(tmp_path / "pub.pem")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "label values" in line]
    assert len(errors) == 1 and "-1, 5" in errors[0] and "3 classes" in errors[0], done.stderr
    assert not out.exists()
