"""The compiler's exceptions; the CLI turns each into one clear line.

    CompileError                  base: compilation cannot go on; the message says what to fix
    ├── InvalidModelError         the input is not a loadable, valid ONNX model
    ├── CalibrationDataError      calibration or validation data does not match the model's inputs
    ├── UnsupportedOpError        a runtime or lowering cannot take an operator (op_type, runtime)
    ├── UnsupportedDtypeError     a model input or output has a dtype no variant can serve (names the tensor)
    ├── LoweringError             model_compiler/litert/errors.py: a supported op used in a way the
    │                             TFLite lowering cannot express (names the node)
    └── VariantSkipped            one variant cannot be built or loaded; the others go on (`reason`
                                  lands in the report)

One mapping per boundary: `tandem-compile` (`cli.main`) prints `tandem-compile: error: <message>` and
exits 2 for these (and for the ProfileError, ManifestError and SignatureError of the packages below);
inside a build, `variants/` turns a variant's CompileError into VariantSkipped.
"""

from __future__ import annotations


class CompileError(Exception):
    """Compilation cannot go on; the message says what to fix."""


class InvalidModelError(CompileError):
    """The input file is not a loadable, valid ONNX model."""


class CalibrationDataError(CompileError):
    """Calibration or validation data does not match the model's inputs."""


class UnsupportedDtypeError(CompileError):
    """A model input or output has a dtype that no variant can be built for; the message names the tensor."""


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
