"""Errors of the TFLite lowering; both are CompileErrors, so the builder can turn them into skip reasons."""

from __future__ import annotations

from tandem.model_compiler.errors import CompileError, UnsupportedOpError

RUNTIME = "litert"


class LoweringError(CompileError):
    """The model uses a supported op in a way the lowering cannot express (names the node)."""


def unsupported(op_type: str, node: str, detail: str) -> UnsupportedOpError:
    """An UnsupportedOpError that names the ONNX node, so a user can find it in the graph."""
    return UnsupportedOpError(op_type, RUNTIME, f"node {node!r}: {detail}")


__all__ = ["LoweringError", "RUNTIME", "UnsupportedOpError", "unsupported"]
