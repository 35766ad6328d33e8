"""tandem-compile: one ONNX model in, validated quantized variants per hardware profile out."""

from tandem.model_compiler.errors import (
    CalibrationDataError,
    CompileError,
    InvalidModelError,
    UnsupportedDtypeError,
    UnsupportedOpError,
    VariantSkipped,
)

__all__ = [
    "CalibrationDataError",
    "CompileError",
    "InvalidModelError",
    "UnsupportedDtypeError",
    "UnsupportedOpError",
    "VariantSkipped",
]
