"""`tandem-compile --quiet` silences the libraries' progress too: a real INT8 OpenVINO (NNCF) compile of the
digits model prints nothing on stderr, and --json stays one JSON document on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NNCF_PROGRESS = ("Statistics collection", "Fast Bias correction", "━", "INFO:nncf")


def compile_digits(digits_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.model_compiler.cli",
            str(digits_dir / "edge.onnx"),
            "--profiles",
            "npu-intel",  # OpenVINO only: FP16 and the NNCF INT8 variant
            "--calib",
            str(digits_dir / "calib.npz"),
            "--val",
            str(digits_dir / "val.npz"),
            "--out",
            str(out),
            "--no-timing",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_quiet_int8_openvino_compile_prints_no_progress_of_ours_or_nncfs(digits_dir, tmp_path):
    loud = compile_digits(digits_dir, tmp_path / "loud")
    assert loud.returncode == 0, loud.stderr[-2000:]
    # without --quiet NNCF's bars are there: the check below can see them
    assert any(mark in loud.stderr for mark in NNCF_PROGRESS), loud.stderr

    quiet = compile_digits(digits_dir, tmp_path / "quiet", "--quiet")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    report = json.loads(quiet.stdout)  # one JSON document: no bar or log line leaked onto stdout either
    variants = {v["id"] for v in json.loads((tmp_path / "quiet" / "manifest.json").read_text())["variants"]}
    assert "openvino-int8-nncf-static" in variants, (variants, report.get("profiles"))  # npu-intel: static shapes
    assert quiet.stderr == "", quiet.stderr
