"""Serialize the IR to a TFLite flatbuffer with the schema classes ai-edge-litert ships.

Operator versions follow TFLite's op_version rules for the kernels we emit (int8
kernels need a higher version than float), so other TFLite consumers pick the right one.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tandem.model_compiler.litert.errors import LoweringError
from tandem.model_compiler.litert.ir import Graph, Op, Tensor

if TYPE_CHECKING:
    import flatbuffers

_PADDING = {"SAME": 0, "VALID": 1}
_ACTIVATION = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int8": 9, "int16": 7}


def _schema() -> ModuleType:
    try:  # tflite_runtime can run models but does not ship the schema module
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:  # pragma: no cover - depends on the installed extra
        raise LoweringError(
            "writing TFLite needs ai-edge-litert and flatbuffers (pip install 'tandem[litert]')"
        ) from exc
    return schema


def _conv(s: ModuleType, o: dict[str, Any]) -> object:
    t = s.Conv2DOptionsT()
    t.padding, t.strideH, t.strideW = _PADDING[o["padding"]], o["stride_h"], o["stride_w"]
    t.dilationHFactor, t.dilationWFactor = o.get("dilation_h", 1), o.get("dilation_w", 1)
    t.fusedActivationFunction = _ACTIVATION[o.get("activation", "NONE")]
    return t


def _dwconv(s: ModuleType, o: dict[str, Any]) -> object:
    t = s.DepthwiseConv2DOptionsT()
    t.padding, t.strideH, t.strideW = _PADDING[o["padding"]], o["stride_h"], o["stride_w"]
    t.dilationHFactor, t.dilationWFactor = o.get("dilation_h", 1), o.get("dilation_w", 1)
    t.depthMultiplier = o.get("depth_multiplier", 1)
    t.fusedActivationFunction = _ACTIVATION[o.get("activation", "NONE")]
    return t


def _pool(s: ModuleType, o: dict[str, Any]) -> object:
    t = s.Pool2DOptionsT()
    t.padding, t.strideH, t.strideW = _PADDING[o["padding"]], o["stride_h"], o["stride_w"]
    t.filterHeight, t.filterWidth = o["filter_h"], o["filter_w"]
    t.fusedActivationFunction = _ACTIVATION[o.get("activation", "NONE")]
    return t


def _fc(s: ModuleType, o: dict[str, Any]) -> object:
    t = s.FullyConnectedOptionsT()
    t.fusedActivationFunction = _ACTIVATION[o.get("activation", "NONE")]
    t.keepNumDims = bool(o.get("keep_num_dims", False))
    return t


def _act(cls: str) -> Callable:
    def make(s: ModuleType, o: dict[str, Any]) -> object:
        t = getattr(s, cls)()
        t.fusedActivationFunction = _ACTIVATION[o.get("activation", "NONE")]
        return t

    return make


def _plain(cls: str, **fields: Callable[[dict], Any]) -> Callable:
    def make(s: ModuleType, o: dict[str, Any]) -> object:
        t = getattr(s, cls)()
        for attr, get in fields.items():
            setattr(t, attr, get(o))
        return t

    return make


def _concat(s: ModuleType, o: dict[str, Any]) -> object:
    t = s.ConcatenationOptionsT()
    t.axis = o["axis"]
    t.fusedActivationFunction = _ACTIVATION[o.get("activation", "NONE")]
    return t


def _tconv(s: ModuleType, o: dict[str, Any]) -> object:
    t = s.TransposeConvOptionsT()
    t.padding, t.strideH, t.strideW = _PADDING[o["padding"]], o["stride_h"], o["stride_w"]
    t.fusedActivationFunction = _ACTIVATION[o.get("activation", "NONE")]
    return t


def _resize(cls: str) -> Callable:
    def make(s: ModuleType, o: dict[str, Any]) -> object:
        t = getattr(s, cls)()
        t.alignCorners, t.halfPixelCenters = bool(o.get("align_corners")), bool(o.get("half_pixel_centers"))
        return t

    return make


# kind -> (BuiltinOptions member or None, options factory, float version, int8 version)
OPS: dict[str, tuple[str | None, Callable | None, int, int]] = {
    "CONV_2D": ("Conv2DOptions", _conv, 1, 3),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2DOptions", _dwconv, 1, 3),
    "FULLY_CONNECTED": ("FullyConnectedOptions", _fc, 1, 4),
    "ADD": ("AddOptions", _act("AddOptionsT"), 1, 2),
    "SUB": ("SubOptions", _act("SubOptionsT"), 1, 2),
    "MUL": ("MulOptions", _act("MulOptionsT"), 1, 2),
    "AVERAGE_POOL_2D": ("Pool2DOptions", _pool, 1, 2),
    "MAX_POOL_2D": ("Pool2DOptions", _pool, 1, 2),
    "MEAN": ("ReducerOptions", _plain("ReducerOptionsT", keepDims=lambda o: bool(o.get("keep_dims"))), 1, 2),
    "REDUCE_MAX": ("ReducerOptions", _plain("ReducerOptionsT", keepDims=lambda o: bool(o.get("keep_dims"))), 1, 2),
    "RESHAPE": ("ReshapeOptions", _plain("ReshapeOptionsT", newShape=lambda o: list(o["new_shape"])), 1, 1),
    "TRANSPOSE": ("TransposeOptions", _plain("TransposeOptionsT"), 1, 2),
    "CONCATENATION": ("ConcatenationOptions", _concat, 1, 2),
    "SOFTMAX": ("SoftmaxOptions", _plain("SoftmaxOptionsT", beta=lambda o: float(o.get("beta", 1.0))), 1, 2),
    "SPLIT": ("SplitOptions", _plain("SplitOptionsT", numSplits=lambda o: int(o["num_splits"])), 1, 2),
    "PAD": ("PadOptions", _plain("PadOptionsT"), 1, 2),
    "PADV2": ("PadV2Options", _plain("PadV2OptionsT"), 1, 2),
    "LEAKY_RELU": ("LeakyReluOptions", _plain("LeakyReluOptionsT", alpha=lambda o: float(o["alpha"])), 1, 2),
    "MAXIMUM": ("MaximumMinimumOptions", _plain("MaximumMinimumOptionsT"), 1, 2),
    "MINIMUM": ("MaximumMinimumOptions", _plain("MaximumMinimumOptionsT"), 1, 2),
    "HARD_SWISH": ("HardSwishOptions", _plain("HardSwishOptionsT"), 1, 1),
    "QUANTIZE": ("QuantizeOptions", _plain("QuantizeOptionsT"), 1, 1),
    "DEQUANTIZE": ("DequantizeOptions", _plain("DequantizeOptionsT"), 1, 2),
    "TRANSPOSE_CONV": ("TransposeConvOptions", _tconv, 3, 3),
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighborOptions", _resize("ResizeNearestNeighborOptionsT"), 3, 3),
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", _resize("ResizeBilinearOptionsT"), 3, 3),
    "DIV": ("DivOptions", _act("DivOptionsT"), 1, 2),
    "STRIDED_SLICE": ("StridedSliceOptions", _plain("StridedSliceOptionsT"), 1, 2),
    "BATCH_MATMUL": (
        "BatchMatMulOptions",
        _plain("BatchMatMulOptionsT", adjX=lambda o: bool(o.get("adj_x")), adjY=lambda o: bool(o.get("adj_y"))),
        1,
        2,
    ),
    "DEPTH_TO_SPACE": (
        "DepthToSpaceOptions",
        _plain("DepthToSpaceOptionsT", blockSize=lambda o: int(o["block_size"])),
        1,
        2,
    ),
    "SQRT": (None, None, 1, 1),
    "RSQRT": (None, None, 1, 2),
    "RELU": (None, None, 1, 2),
    "RELU6": (None, None, 1, 2),
    "RELU_N1_TO_1": (None, None, 1, 1),
    "LOGISTIC": (None, None, 1, 2),
    "TANH": (None, None, 1, 2),
}


def _version(graph: Graph, op: Op) -> int:
    _, _, float_version, int8_version = OPS[op.kind]
    int8 = any(i >= 0 and graph.tensors[i].dtype == "int8" for i in op.inputs + op.outputs)
    version = int8_version if int8 else float_version
    if op.kind == "FULLY_CONNECTED" and op.options.get("keep_num_dims"):
        version = max(version, 5)
    return version


class _Shared:
    """Vectors and tables written once and pointed at from every place that holds the same values.

    TFLite stores a float32 scale and an int64 zero point per channel of every per-channel tensor,
    and XNNPACK delegates an int8 conv only when its int32 bias carries per-channel parameters too:
    24 bytes per output channel against 9 weight bytes per channel of a 3x3 depthwise conv. Those
    parameters, not the weights (0.25x of FP32), kept INT8 .tflite files at 0.31x (PP-OCRv4 det)
    and 0.48x (PP-OCR cls) of FP32. The zero points are all 0, so flatbuffers' shared offsets
    (one vector per channel count, one table per distinct set of parameters) store them once; the
    same goes for equal tensor shapes and equal builtin-options tables (most convs, adds and muls
    of a network carry the same ones). The interpreter's verifier accepts shared offsets.
    """

    def __init__(self, schema: ModuleType) -> None:
        self._s = schema
        self._vectors: dict[tuple[str, bytes], int] = {}
        self._tables: dict[tuple, int] = {}

    def quantization(self, builder: flatbuffers.Builder, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> int:
        key = ("quantization", scale.tobytes(), zero_point.tobytes(), axis)
        if key not in self._tables:
            s = self._s
            scale_at, zero_at = self.vector(builder, scale), self.vector(builder, zero_point)
            s.QuantizationParametersStart(builder)
            s.QuantizationParametersAddScale(builder, scale_at)
            s.QuantizationParametersAddZeroPoint(builder, zero_at)
            s.QuantizationParametersAddQuantizedDimension(builder, axis)
            self._tables[key] = s.QuantizationParametersEnd(builder)
        return self._tables[key]

    def table(self, builder: flatbuffers.Builder, options: Any) -> int:
        """A builtin-options table (an object-API value), once per class and field values."""
        key = (type(options).__name__, repr(sorted(vars(options).items())))
        if key not in self._tables:
            self._tables[key] = options.Pack(builder)
        return self._tables[key]

    def vector(self, builder: flatbuffers.Builder, values: np.ndarray) -> int:
        key = (values.dtype.str, values.tobytes())
        if key not in self._vectors:
            self._vectors[key] = builder.CreateNumpyVector(values)
        return self._vectors[key]


def _packed_types(s: Any, shared: _Shared) -> tuple[type, type, type]:
    """Object-API classes for quantization parameters, tensors and builtin options that pack
    through `shared`. `s` is the schema module (no type stubs), typed Any so mypy accepts its
    classes as bases."""

    class Quantization(s.QuantizationParametersT):
        def __init__(self, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> None:
            super().__init__()
            self.scale, self.zeroPoint, self.quantizedDimension = scale, zero_point, axis

        def Pack(self, builder: flatbuffers.Builder) -> int:
            return shared.quantization(builder, self.scale, self.zeroPoint, self.quantizedDimension)

    class Tensor(s.TensorT):
        """Shape, type, buffer, name and quantization: the only fields the writer sets."""

        def Pack(self, builder: flatbuffers.Builder) -> int:
            shape = shared.vector(builder, np.asarray(self.shape, dtype="<i4"))
            name = builder.CreateString(self.name) if self.name is not None else None
            quantization = self.quantization.Pack(builder) if self.quantization is not None else None
            s.TensorStart(builder)
            s.TensorAddShape(builder, shape)
            s.TensorAddType(builder, self.type)
            s.TensorAddBuffer(builder, self.buffer)
            if name is not None:
                s.TensorAddName(builder, name)
            if quantization is not None:
                s.TensorAddQuantization(builder, quantization)
            return s.TensorEnd(builder)

    class Options:
        def __init__(self, options: object) -> None:
            self.options = options

        def Pack(self, builder: flatbuffers.Builder) -> int:
            return shared.table(builder, self.options)

    return Quantization, Tensor, Options


def _quantization(packed: type, tensor: Tensor) -> object:
    if tensor.quant is None:
        return None
    return packed(
        np.asarray(tensor.quant.scale, dtype="<f4"),
        np.asarray(tensor.quant.zero_point, dtype="<i8"),
        int(tensor.quant.axis),
    )


def write(graph: Graph, description: str = "tandem onnx->tflite lowering", names: bool = False) -> bytes:
    """The TFLite flatbuffer (file identifier TFL3) for `graph`.

    Only the graph's inputs and outputs keep their names unless `names` (for debugging): sessions
    find tensors by those names and everything else (calibration included) by index, and the
    other names were ~2.5% of a small INT8 model (PP-OCR cls: 4.9 of 199 KB)."""
    s = _schema()
    import flatbuffers

    model = s.ModelT()
    model.version = 3
    model.description = description
    model.buffers = [s.BufferT()]  # buffer 0: the empty sentinel every TFLite model starts with
    sub = s.SubGraphT()
    sub.name = "main"
    sub.tensors = []
    quantization_type, tensor_type, options_type = _packed_types(s, _Shared(s))
    named = set(graph.inputs) | set(graph.outputs)
    for k, tensor in enumerate(graph.tensors):
        t = tensor_type()
        t.name = tensor.name if names or k in named else None
        t.shape = [int(d) for d in tensor.shape]
        if tensor.dtype not in _TYPES:
            raise LoweringError(f"tensor {tensor.name!r}: dtype {tensor.dtype} has no TFLite type here")
        t.type = _TYPES[tensor.dtype]
        t.quantization = _quantization(quantization_type, tensor)
        if tensor.data is not None:
            buf = s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(tensor.data.astype(tensor.dtype)).tobytes(), dtype=np.uint8)
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
        else:
            t.buffer = 0
        sub.tensors.append(t)
    codes: dict[tuple[str, int], int] = {}
    model.operatorCodes = []
    sub.operators = []
    for op in graph.ops:
        if op.kind not in OPS:
            raise LoweringError(f"internal: no writer entry for TFLite op {op.kind} (from {op.source})")
        key = (op.kind, _version(graph, op))
        if key not in codes:
            code = s.OperatorCodeT()
            builtin = getattr(s.BuiltinOperator, op.kind)
            code.builtinCode = builtin
            code.deprecatedBuiltinCode = min(builtin, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            code.version = key[1]
            model.operatorCodes.append(code)
            codes[key] = len(model.operatorCodes) - 1
        o = s.OperatorT()
        o.opcodeIndex = codes[key]
        o.inputs = [int(i) for i in op.inputs]
        o.outputs = [int(i) for i in op.outputs]
        options_name, factory, _, _ = OPS[op.kind]
        if options_name is not None:
            assert factory is not None, f"{op.kind}: options without a factory"
            o.builtinOptionsType = getattr(s.BuiltinOptions, options_name)
            o.builtinOptions = options_type(factory(s, op.options))
        sub.operators.append(o)
    sub.inputs = [int(i) for i in graph.inputs]
    sub.outputs = [int(i) for i in graph.outputs]
    model.subgraphs = [sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
