"""Shared fixtures: the digits models (trained once per session) and the OCR models
that the rapidocr-onnxruntime package ships."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "digits"))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """edge.onnx, cloud.onnx, calib/val/test.npz from examples/digits/train.py."""
    import train  # examples/digits/train.py

    out = tmp_path_factory.mktemp("digits")
    train.train(out)
    return out


def rapidocr_model(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.fail("rapidocr-onnxruntime is a dev dependency: run `make test` (it installs it)")
    path = Path(spec.origin).parent / "models" / name
    assert path.is_file(), f"{path} missing from the rapidocr-onnxruntime package"
    return path


@pytest.fixture(scope="session")
def ocr_cls_model() -> Path:
    """PP-OCR mobile v2 text-orientation classifier (opset 11, input [N,3,48,192])."""
    return rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")


@pytest.fixture(scope="session")
def ocr_det_model() -> Path:
    """PP-OCRv4 text detection (input [N,3,H,W], H and W multiples of 32)."""
    return rapidocr_model("ch_PP-OCRv4_det_infer.onnx")
