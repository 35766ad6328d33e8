"""numpy arrays <-> KServe v2 tensors (raw bytes or typed contents), with size checks.

Both the hub (decoding requests, encoding answers) and the agent's fallback client
(the reverse) go through here, so a malformed tensor is rejected with the same
message on either side. Raw contents are little-endian, row-major, unpadded; a
decoded raw tensor is a read-only view over the received bytes (no copy). Every
standard v2 datatype is spoken (BF16 when ml_dtypes is installed); every error
names the tensor.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from tandem.protocols import inference_pb2 as pb
from tandem.protocols import limits as _limits
from tandem.protocols.errors import ContractError


class TensorCodecError(ContractError):
    """A tensor cannot be encoded or decoded; the message names the tensor and the problem."""


def _bfloat16() -> np.dtype | None:
    """numpy has no bfloat16; ml_dtypes (an onnx/jax dependency) adds one when installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


# Every standard v2 datatype -> numpy dtype (explicitly little-endian where it matters).
# BYTES is an object array of `bytes`; on the raw wire each element is a 4-byte
# little-endian length and its bytes. BF16 needs ml_dtypes.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_BF16 = _bfloat16()
if _BF16 is not None:
    DATATYPES["BF16"] = _BF16
STANDARD_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
)
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name not in ("BYTES", "BF16")}

# Which repeated field of InferTensorContents carries each datatype (FP16 and BF16 have none).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


@dataclass(frozen=True)
class TensorLimits:
    """Upper bounds a decoder enforces before allocating anything."""

    max_elements: int = _limits.MAX_TENSOR_ELEMENTS
    max_bytes: int = _limits.MAX_TENSOR_BYTES
    max_dims: int = _limits.MAX_TENSOR_DIMS
    max_tensors: int = _limits.MAX_TENSORS_PER_REQUEST


DEFAULT_LIMITS = TensorLimits()


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name for a numpy dtype (e.g. float32 -> "FP32"; object or bytes_ -> "BYTES")."""
    if isinstance(dtype, str) and dtype in ("string", "str", "object", "bytes"):  # runtimes' names for BYTES
        return "BYTES"
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    if _BF16 is not None and dt == _BF16:
        return "BF16"
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise TensorCodecError(f"dtype {dt.name} has no Tandem v2 datatype (supported: {', '.join(DATATYPES)})")
    return name


def dtype_of(datatype: str, name: str | None = None) -> np.dtype:
    """The numpy dtype for a v2 datatype name (e.g. "FP32" -> float32); `name` is the tensor, for the message."""
    dt = DATATYPES.get(datatype)
    if dt is None:
        where = f"tensor {name!r}: " if name is not None else ""
        if datatype == "BF16":
            raise TensorCodecError(f"{where}BF16 needs the ml_dtypes package on this side (pip install ml_dtypes)")
        raise TensorCodecError(f"{where}unknown datatype {datatype!r} (supported: {', '.join(DATATYPES)})")
    return dt


def check_shape(name: str, shape: Sequence[int], limits: TensorLimits = DEFAULT_LIMITS) -> int:
    """Validate a concrete shape against `limits`; returns its element count."""
    dims = [int(d) for d in shape]
    if len(dims) > limits.max_dims:
        raise TensorCodecError(f"tensor {name!r}: {len(dims)} dimensions, at most {limits.max_dims} allowed")
    if any(d < 0 for d in dims):
        raise TensorCodecError(f"tensor {name!r}: shape {dims} has a negative dimension; send the concrete shape")
    if any(d > limits.max_elements for d in dims):  # [2**62, 0] holds 0 elements but no array can have it
        raise TensorCodecError(f"tensor {name!r}: a dimension of {dims} exceeds the limit of {limits.max_elements}")
    count = math.prod(dims)
    if count > limits.max_elements:
        raise TensorCodecError(f"tensor {name!r}: {count} elements exceeds the limit of {limits.max_elements}")
    return count


def to_raw(name: str, array: np.ndarray, limits: TensorLimits = DEFAULT_LIMITS) -> tuple[str, list[int], bytes]:
    """Encode one array as (datatype, shape, little-endian bytes)."""
    arr = np.asarray(array)
    datatype = _datatype_for(name, arr.dtype)
    count = check_shape(name, arr.shape, limits)
    if datatype == "BYTES":
        return datatype, list(arr.shape), _bytes_to_raw(name, arr, limits)
    dt = DATATYPES[datatype]
    if count * dt.itemsize > limits.max_bytes:
        raise TensorCodecError(f"tensor {name!r}: {count * dt.itemsize} bytes exceeds the limit of {limits.max_bytes}")
    data = np.ascontiguousarray(arr, dtype=dt).tobytes()
    return datatype, list(arr.shape), data


def from_raw(
    name: str, datatype: str, shape: Sequence[int], data: bytes, limits: TensorLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """Decode raw bytes into a read-only array; the byte size must match shape and datatype."""
    dt = dtype_of(datatype, name)
    count = check_shape(name, shape, limits)
    if datatype == "BYTES":
        return _bytes_from_raw(name, shape, count, data, limits)
    expected = count * dt.itemsize
    if expected > limits.max_bytes:
        raise TensorCodecError(f"tensor {name!r}: {expected} bytes exceeds the limit of {limits.max_bytes}")
    if len(data) != expected:
        raise TensorCodecError(
            f"tensor {name!r}: {len(data)} raw bytes do not match {datatype} shape {list(shape)} "
            f"(expected {expected} bytes)"
        )
    array = np.frombuffer(data, dtype=dt, count=count).reshape([int(d) for d in shape])
    if datatype == "BOOL" and count and np.frombuffer(data, dtype=np.uint8).max() > 1:
        raise TensorCodecError(f"tensor {name!r}: BOOL bytes must be 0 or 1")
    return array


def to_contents(
    name: str, array: np.ndarray, contents: pb.InferTensorContents, limits: TensorLimits = DEFAULT_LIMITS
) -> tuple[str, list[int]]:
    """Fill `contents` with the array's values in the typed field for its datatype."""
    arr = np.asarray(array)
    datatype = _datatype_for(name, arr.dtype)
    check_shape(name, arr.shape, limits)
    field_name = _CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise TensorCodecError(f"tensor {name!r}: {datatype} has no typed contents in v2; send it as raw bytes")
    values = [_as_bytes(name, v) for v in arr.ravel()] if datatype == "BYTES" else arr.ravel().tolist()
    getattr(contents, field_name).extend(values)
    return datatype, list(arr.shape)


def from_contents(
    name: str,
    datatype: str,
    shape: Sequence[int],
    contents: pb.InferTensorContents,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode typed contents; exactly the field for `datatype` may be set, with one value per element."""
    dt = dtype_of(datatype, name)
    count = check_shape(name, shape, limits)
    field_name = _CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise TensorCodecError(f"tensor {name!r}: {datatype} cannot travel as typed contents; send raw bytes")
    others = [f for f in _ALL_CONTENTS_FIELDS if f != field_name and len(getattr(contents, f))]
    if others:
        raise TensorCodecError(f"tensor {name!r}: {datatype} values belong in {field_name}, not {', '.join(others)}")
    values = getattr(contents, field_name)
    if len(values) != count:
        raise TensorCodecError(
            f"tensor {name!r}: {len(values)} values in {field_name} do not match shape {list(shape)} ({count} elements)"
        )
    if dt.kind in "iu" and count:
        info = np.iinfo(dt)
        wide = np.fromiter(values, dtype=np.int64 if dt.kind == "i" else np.uint64, count=count)
        if wide.min() < info.min or wide.max() > info.max:
            raise TensorCodecError(f"tensor {name!r}: values outside the {datatype} range [{info.min}, {info.max}]")
        return wide.astype(dt).reshape([int(d) for d in shape])
    if datatype == "BYTES":
        if sum(len(v) for v in values) > limits.max_bytes:
            raise TensorCodecError(f"tensor {name!r}: BYTES elements exceed the limit of {limits.max_bytes} bytes")
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape([int(d) for d in shape])
    return np.fromiter(values, dtype=dt, count=count).reshape([int(d) for d in shape])


def _datatype_for(name: str, dtype: np.dtype) -> str:
    try:
        return datatype_of(dtype)
    except TensorCodecError as exc:
        raise TensorCodecError(f"tensor {name!r}: {exc}") from None


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    raise TensorCodecError(f"tensor {name!r}: BYTES elements must be bytes or str, not {type(value).__name__}")


def _bytes_to_raw(name: str, arr: np.ndarray, limits: TensorLimits) -> bytes:
    """v2's raw BYTES layout: per element a uint32 little-endian length, then the bytes."""
    parts: list[bytes] = []
    total = 0
    for value in arr.ravel():
        item = _as_bytes(name, value)
        total += 4 + len(item)
        if total > limits.max_bytes:
            raise TensorCodecError(f"tensor {name!r}: more than {limits.max_bytes} bytes exceeds the limit")
        parts.append(struct.pack("<I", len(item)))
        parts.append(item)
    return b"".join(parts)


def _bytes_from_raw(name: str, shape: Sequence[int], count: int, data: bytes, limits: TensorLimits) -> np.ndarray:
    if len(data) > limits.max_bytes:
        raise TensorCodecError(f"tensor {name!r}: {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    view = memoryview(data)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise TensorCodecError(
                f"tensor {name!r}: raw BYTES end after {i} of {count} elements "
                "(each element is a 4-byte little-endian length, then its bytes)"
            )
        (size,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + size > len(view):
            raise TensorCodecError(
                f"tensor {name!r}: raw BYTES element {i} claims {size} bytes, {len(view) - offset} remain"
            )
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise TensorCodecError(
            f"tensor {name!r}: {len(view) - offset} raw bytes left over after {count} BYTES elements"
        )
    return out.reshape([int(d) for d in shape])


def _decode_tensors(
    kind: str, tensors: Sequence[Any], raw: Sequence[bytes], limits: TensorLimits
) -> dict[str, np.ndarray]:
    if len(tensors) > limits.max_tensors:
        raise TensorCodecError(f"{len(tensors)} {kind} tensors exceed the limit of {limits.max_tensors}")
    if raw and len(raw) != len(tensors):
        raise TensorCodecError(
            f"{len(raw)} raw contents for {len(tensors)} {kind} tensors; send one per tensor, in order"
        )
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise TensorCodecError(f"{kind} tensor #{i} has no name")
        if name in out:
            raise TensorCodecError(f"{kind} tensor {name!r} appears twice")
        has_contents = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        if raw:
            if has_contents:
                raise TensorCodecError(f"tensor {name!r}: typed contents given alongside raw contents; use one form")
            out[name] = from_raw(name, tensor.datatype, tensor.shape, raw[i], limits)
        else:
            out[name] = from_contents(name, tensor.datatype, tensor.shape, tensor.contents, limits)
    return out


def decode_request_inputs(
    request: pb.ModelInferRequest, limits: TensorLimits = DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """The input tensors of a ModelInferRequest, by name, validated against `limits`."""
    return _decode_tensors("input", request.inputs, request.raw_input_contents, limits)


def decode_response_outputs(
    response: pb.ModelInferResponse, limits: TensorLimits = DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """The output tensors of a ModelInferResponse, by name (raw or typed, as the server sent them)."""
    return _decode_tensors("output", response.outputs, response.raw_output_contents, limits)


def encode_request_inputs(
    request: pb.ModelInferRequest,
    inputs: Mapping[str, np.ndarray],
    *,
    raw: bool = True,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> None:
    """Append `inputs` to `request`, as raw contents (default, fastest) or typed contents."""
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name)
        if raw:
            tensor.datatype, shape, data = to_raw(name, array, limits)
            request.raw_input_contents.append(data)
        else:
            tensor.datatype, shape = to_contents(name, array, tensor.contents, limits)
        tensor.shape.extend(shape)


def encode_response_outputs(
    response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray], *, limits: TensorLimits = DEFAULT_LIMITS
) -> None:
    """Append `outputs` to `response` as raw contents."""
    for name, array in outputs.items():
        tensor = response.outputs.add(name=name)
        tensor.datatype, shape, data = to_raw(name, array, limits)
        tensor.shape.extend(shape)
        response.raw_output_contents.append(data)


__all__ = [
    "DATATYPES",
    "DEFAULT_LIMITS",
    "STANDARD_DATATYPES",
    "TensorCodecError",
    "TensorLimits",
    "check_shape",
    "datatype_of",
    "decode_request_inputs",
    "decode_response_outputs",
    "dtype_of",
    "encode_request_inputs",
    "encode_response_outputs",
    "from_contents",
    "from_raw",
    "to_contents",
    "to_raw",
]
