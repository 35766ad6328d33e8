"""ONNX -> TFLite (LiteRT) lowering without TensorFlow: FP32 and full-integer INT8.

prepass.py rewrites ONNX (folding), graph.py + ops.py lower to an IR with NHWC layout
decisions, quantize.py turns the float IR into int8, writer.py emits the flatbuffer.
"""

from model_compiler.litert.errors import LoweringError
from model_compiler.litert.graph import Lowered, lower
from model_compiler.litert.writer import write

__all__ = ["Lowered", "LoweringError", "lower", "write"]
