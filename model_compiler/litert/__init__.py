"""ONNX -> TFLite (LiteRT) lowering without TensorFlow: FP32 and full-integer INT8.

prepass.py rewrites ONNX (constant folding; BatchNorm, per-channel scale and bias folded
into the layer before; HardSwish and x/Sqrt(v) patterns); graph.py drives the lowering
with NHWC layout decisions; ops.py, spatial.py and tensor_ops.py hold the per-op rules;
calibrate.py collects activation ranges with the interpreter; quantize.py turns the
float IR into int8 (scale_fold.py folds a RELU6 gate's 1/6 into its conv there);
writer.py emits the flatbuffer with the schema ai-edge-litert ships; footprint.py says where
a written file's bytes go.

ONNX ops lowered: Conv (grouped, depthwise), ConvTranspose, Gemm, MatMul (constant or
computed operands), BatchNormalization, Relu, Clip, LeakyRelu, Sigmoid, Tanh,
HardSigmoid, HardSwish, Add, Sub, Mul, Div, Pow (0.5, 1, 2), Sqrt, ReduceMean,
AveragePool, MaxPool, GlobalAveragePool, GlobalMaxPool, Resize (nearest, linear),
Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Slice, Split, Softmax, and
Identity/Dropout/Cast/Shape/Gather/Range/Expand/ConstantOfShape where they fold to
constants or aliases.
Anything else raises UnsupportedOpError naming the op and the node.
"""

from tandem.model_compiler.litert.errors import LoweringError
from tandem.model_compiler.litert.graph import Lowered, lower
from tandem.model_compiler.litert.writer import write

__all__ = ["Lowered", "LoweringError", "lower", "write"]
