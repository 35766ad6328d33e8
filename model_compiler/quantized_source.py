"""A source model that is already quantized (QDQ, QOperator or dynamic, e.g. from onnxruntime's
quantize_static): which variants would quantize it twice or cannot convert it, and why, said once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tandem.model_compiler.model_io import graphs_within

if TYPE_CHECKING:
    import onnx

# Operators only a quantized graph holds (ONNX and com.microsoft), besides every QLinear* operator.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "MatMulNBits",
    }
)


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """The quantized operator types the model holds, subgraphs included (sorted; empty: a float model)."""
    return sorted(
        {
            node.op_type
            for graph in graphs_within(model.graph)
            for node in graph.node
            if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear")
        }
    )


def note(ops: list[str]) -> str:
    """The compile note for an already-quantized source."""
    return (
        f"the model is already quantized ({', '.join(ops)}): its fp32 variants run it as given, its quantized "
        "operators staying integer; no variant quantizes it again"
    )


def refusal(runtime: str, precision: str, ops: list[str]) -> str | None:
    """Why a recipe is not built for an already-quantized source, or None when it is.

    INT8 on any runtime would calibrate and insert a second set of scales over the first (ONNX Runtime's
    quantizer even writes duplicate node names; NNCF's result misses the gate). ONNX Runtime's FP16
    conversion retypes the float tensors that feed QuantizeLinear, which then does not load. OpenVINO keeps
    quantized operators integer under an FP16/BF16 inference precision, so those are built and validated.
    """
    if not ops:
        return None
    what = ", ".join(ops)
    if precision == "int8":
        return (
            f"the model is already quantized ({what}): INT8 would quantize it a second time; its fp32 "
            "variant runs its quantized graph as given (to re-quantize, compile the float model it came from)"
        )
    if runtime == "onnxruntime" and precision in ("fp16", "bf16"):
        return (
            f"the model is already quantized ({what}): ONNX Runtime's {precision.upper()} conversion cannot retype "
            "the float tensors its quantized operators take; its fp32 variant runs it as given"
        )
    return None
