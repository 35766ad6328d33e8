"""The compiler's exceptions; the CLI turns each into one clear line."""

from __future__ import annotations


class CompileError(Exception):
    """Compilation cannot go on; the message says what to fix."""


class InvalidModelError(CompileError):
    """The input file is not a loadable, valid ONNX model."""


class CalibrationDataError(CompileError):
    """Calibration or validation data does not match the model's inputs."""


class UnsupportedOpError(CompileError):
    """A runtime or lowering cannot take an operator of the model."""

    def __init__(self, op_type: str, runtime: str, detail: str = "") -> None:
        self.op_type = op_type
        self.runtime = runtime
        super().__init__(f"{runtime} cannot take operator {op_type}" + (f": {detail}" if detail else ""))


class VariantSkipped(CompileError):
    """One variant cannot be built or loaded; the others go on. `reason` is shown in the report."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
