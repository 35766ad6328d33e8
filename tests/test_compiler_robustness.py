"""Compiler errors a person can act on: a .tflite input is refused with the conversion to run,
OpenVINO's conversion failure keeps the line that names the operator, and OpenVINO's telemetry
is declined before it starts (it would hold an offline machine's exit for ~30 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tandem.model_compiler.errors import InvalidModelError
from tandem.model_compiler.model_io import load_model
from tandem.model_compiler.variants.openvino import _conversion_summary, telemetry_off


def test_tflite_input_is_refused_with_the_exact_conversion_command(tmp_path):
    model = tmp_path / "detector.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))  # a TFLite flatbuffer's header
    with pytest.raises(InvalidModelError) as err:
        load_model(model)
    text = str(err.value)
    assert (
        "TFLite" in text and f"python -m tf2onnx.convert --tflite {model} --output {tmp_path / 'detector.onnx'}" in text
    )
    renamed = tmp_path / "detector.bin"  # found by its identifier, whatever the name
    renamed.write_bytes(model.read_bytes())
    with pytest.raises(InvalidModelError, match="tf2onnx"):
        load_model(renamed)


def test_cli_shows_the_conversion_command_without_a_traceback(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    (tmp_path / "d.npz").write_bytes(b"")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.model_compiler.cli",
            str(model),
            "--calib",
            str(tmp_path / "d.npz"),
            "--val",
            str(tmp_path / "d.npz"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "tf2onnx.convert --tflite" in run.stderr and "Traceback" not in run.stderr


def test_openvino_conversion_failure_keeps_the_operator_line():
    exc = RuntimeError(
        "Check 'false' failed at src/frontends/common/src/unconverted_ops_report.cpp:151:\n"
        "FrontEnd API failed with OpConversionFailure:\n"
        "-- Conversion is failed for: LSTM-16\n"
    )
    summary = _conversion_summary(exc)
    assert "Conversion is failed for: LSTM-16" in summary and "unconverted_ops_report" not in summary


def test_openvino_telemetry_is_declined_and_ci_left_as_it_was(monkeypatch):
    pytest.importorskip("openvino_telemetry")
    monkeypatch.delenv("CI", raising=False)
    code = (
        "import os; from tandem.model_compiler.variants.openvino import telemetry_off; telemetry_off(); "
        "from openvino_telemetry import Telemetry; print(Telemetry().consent, os.environ.get('CI'))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["False", "None"], run.stderr
    telemetry_off()  # idempotent in this process too
