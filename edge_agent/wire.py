"""Encode and decode local-API messages: a protobuf header frame, then raw tensor frames.

Decoding is zero-copy: each tensor is an `np.frombuffer` view over its frame's memory.
Every check against `protocols.limits` happens here, so the server and the clients
agree on what is valid and the error messages name the broken limit.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from tandem.edge_agent.errors import BadRequestError
from tandem.protocols import limits
from tandem.protocols import local_api_pb2 as pb
from tandem.protocols.tensor_codec import DATATYPES

Frame = Any  # bytes, memoryview or zmq.Frame: anything exposing the buffer protocol

# numpy dtypes by wire name, little-endian, from the one v2 table (bfloat16 only where ml_dtypes is installed)
_WIRE_NP_DTYPES = {dt.name: dt for dt in DATATYPES.values() if dt.name in limits.WIRE_DTYPES}


def _buffer(frame: Frame) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    return buf if buf is not None else memoryview(frame)


def tensor_header(name: str, array: np.ndarray) -> pb.TensorHeader:
    return pb.TensorHeader(name=name, dtype=array.dtype.name, shape=list(array.shape))


def tensor_frames(arrays: Sequence[np.ndarray]) -> list[memoryview | bytes]:
    """C-contiguous little-endian buffers of `arrays`, copied only when they are not already."""
    frames: list[memoryview | bytes] = []
    for a in arrays:
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        c = np.ascontiguousarray(a)
        if c.dtype.kind == "V":  # ml_dtypes' bfloat16 has no buffer-protocol format: its bytes, as uint8
            c = c.reshape(-1).view(np.uint8)
        frames.append(c.data.cast("B") if a.size else b"")  # cast refuses 0 in a shape
    return frames


def check_array(name: str, array: np.ndarray) -> None:
    """Raise BadRequestError when `array` breaks a wire limit (so clients fail before sending)."""
    if array.dtype.name not in limits.WIRE_DTYPES:
        raise BadRequestError(
            f"input {name!r}: dtype {array.dtype.name} is not supported (use one of {', '.join(limits.WIRE_DTYPES)})"
        )
    if array.ndim > limits.MAX_TENSOR_DIMS:
        raise BadRequestError(f"input {name!r}: rank {array.ndim} exceeds the limit of {limits.MAX_TENSOR_DIMS}")
    if array.size > limits.MAX_TENSOR_ELEMENTS:
        raise BadRequestError(f"input {name!r}: {array.size} elements exceed the limit of {limits.MAX_TENSOR_ELEMENTS}")


def encode_request(
    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    request_id: str = "",
    model_name: str = "",
    threshold: float | None = None,
    mode: pb.Mode = pb.MODE_AUTO,
    return_outputs: bool = False,
    stream_id: str = "",
) -> list[Any]:
    """Frames of one request; a sequence of arrays matches model inputs by position."""
    items = list(inputs.items()) if isinstance(inputs, Mapping) else [("", a) for a in inputs]
    if len(items) > limits.MAX_TENSORS_PER_REQUEST:
        raise BadRequestError(f"{len(items)} input tensors exceed the limit of {limits.MAX_TENSORS_PER_REQUEST}")
    arrays = []
    for name, value in items:
        array = np.asarray(value)
        check_array(name, array)
        arrays.append(array)
    options = pb.RequestOptions(mode=mode, return_outputs=return_outputs)
    if threshold is not None:
        options.threshold = threshold
    header = pb.RequestHeader(
        schema_version=limits.LOCAL_API_SCHEMA_VERSION,
        request_id=request_id,
        model_name=model_name,
        inputs=[tensor_header(n, a) for (n, _), a in zip(items, arrays)],
        options=options,
        stream_id=stream_id,
    )
    return [header.SerializeToString(), *tensor_frames(arrays)]


# RequestHeader.request_id is field 2, length-delimited: tag (2 << 3) | 2. Protobuf parses
# concatenated encodings as one merged message, so a cached header + this field is a header.
_REQUEST_ID_TAG = b"\x12"
_TRACEPARENT_TAG = b"\x3a"  # RequestHeader.traceparent (field 7, length-delimited)
_TRACEPARENT_MAX = 128  # a W3C traceparent is 55 characters; the header limit bounds the rest anyway
TEMPLATES_MAX = 64  # distinct (inputs, options) a RequestTemplates keeps before starting over


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class RequestTemplates:
    """`encode_request`, with the header encoded once per input layout and options.

    A client sending the same kind of request again pays for its request id and its
    tensor buffers only: the checks, the TensorHeaders and the serialization ran when
    the template was made (a fraction of the cost per request: docs/figures.md).
    """

    def __init__(self, max_templates: int = TEMPLATES_MAX) -> None:
        self._max = max_templates
        self._templates: dict[tuple[Any, ...], bytes] = {}
        self._plain: dict[tuple[Any, ...], bytes] = {}  # one array, every option at its default: by (dtype, shape)

    def plain(self, array: np.ndarray, request_id: str) -> list[Any]:
        """`frames([array], request_id=...)` with every option at its default, the usual call, in a
        quarter of its time: one lookup by dtype and shape, and a C-contiguous little-endian array goes
        out as it is (a buffer; the socket copies what is small)."""
        rid = request_id.encode()
        if not rid or len(rid) > 0x7F:  # no id, or one whose length takes more than a byte
            return self.frames([array], request_id=request_id)
        layout = (array.dtype, array.shape)
        template = self._plain.get(layout)
        if template is None:
            template = self._template(None, [array], "", None, pb.MODE_AUTO, False, "")
            if len(self._plain) >= self._max:
                self._plain.clear()
            self._plain[layout] = template
        head = template + _REQUEST_ID_TAG + bytes((len(rid),)) + rid
        if array.flags.c_contiguous and array.size and array.dtype.byteorder != ">" and array.dtype.kind != "V":
            return [head, array]
        return [head, *tensor_frames([array])]

    def frames(
        self,
        inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
        *,
        request_id: str = "",
        model_name: str = "",
        threshold: float | None = None,
        mode: pb.Mode = pb.MODE_AUTO,
        return_outputs: bool = False,
        stream_id: str = "",
        traceparent: str = "",
    ) -> list[Any]:
        """The request's frames. A `traceparent` goes after the request id, so a traced request takes the
        agent's general path (the fast lane knows headers that end in a request id), which records spans."""
        if isinstance(inputs, Mapping):
            names: tuple[str, ...] | None = tuple(inputs)
            arrays = [v if type(v) is np.ndarray else np.asarray(v) for v in inputs.values()]
        else:
            names = None
            arrays = [v if type(v) is np.ndarray else np.asarray(v) for v in inputs]
        template = self._template(names, arrays, model_name, threshold, mode, return_outputs, stream_id)
        rid = request_id.encode()
        head = template + _REQUEST_ID_TAG + _varint(len(rid)) + rid if rid else template
        if traceparent:
            tp = traceparent.encode()
            if len(tp) > _TRACEPARENT_MAX:
                raise BadRequestError(f"traceparent is {len(tp)} bytes; a W3C traceparent is 55")
            head += _TRACEPARENT_TAG + _varint(len(tp)) + tp
        return [head, *tensor_frames(arrays)]

    def _template(
        self,
        names: tuple[str, ...] | None,
        arrays: Sequence[np.ndarray],
        model_name: str,
        threshold: float | None,
        mode: pb.Mode,
        return_outputs: bool,
        stream_id: str,
    ) -> bytes:
        """The header for this input layout and these options, without a request id: encoded (and every
        limit checked) the first time, looked up after."""
        key = (names, model_name, threshold, mode, return_outputs, stream_id, *[(a.dtype, a.shape) for a in arrays])
        template = self._templates.get(key)
        if template is None:
            items = dict(zip(names, arrays)) if names is not None else arrays
            template = encode_request(
                items,
                model_name=model_name,
                threshold=threshold,
                mode=mode,
                return_outputs=return_outputs,
                stream_id=stream_id,
            )[0]  # checks every limit; raises
            if len(self._templates) >= self._max:
                self._templates.clear()
            self._templates[key] = template
        return template


def _parse(message: Any, frame: Frame, what: str) -> Any:
    data: bytes | memoryview
    if type(frame) is bytes:
        data, size = frame, len(frame)
    else:
        data = _buffer(frame)  # upb parses any buffer: no copy
        size = data.nbytes
    limit = limits.MAX_REPLY_HEADER_BYTES if what == "reply" else limits.MAX_HEADER_BYTES
    if size > limit:
        raise BadRequestError(f"{what} header is {size} bytes; the limit is {limit}")
    try:
        message.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise BadRequestError(f"{what} header frame is not a valid {type(message).__name__} protobuf ({exc})") from exc
    return message


def _tensor_layout(th: pb.TensorHeader, label: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, bytes) of a tensor header, or BadRequestError naming the broken limit."""
    if th.dtype not in _WIRE_NP_DTYPES:
        if th.dtype in limits.WIRE_DTYPES:
            raise BadRequestError(f"{label}: dtype {th.dtype!r} needs the ml_dtypes package, not installed here")
        raise BadRequestError(f"{label}: dtype {th.dtype!r} is not one of {', '.join(limits.WIRE_DTYPES)}")
    shape = tuple(int(d) for d in th.shape)
    if len(shape) > limits.MAX_TENSOR_DIMS:
        raise BadRequestError(f"{label}: rank {len(shape)} exceeds the limit of {limits.MAX_TENSOR_DIMS}")
    if any(d < 0 for d in shape):
        raise BadRequestError(f"{label}: shape {list(shape)} has a negative dimension")
    if any(d > limits.MAX_TENSOR_ELEMENTS for d in shape):  # [2**62, 0] holds 0 elements but cannot exist
        raise BadRequestError(
            f"{label}: a dimension of {list(shape)} exceeds the limit of {limits.MAX_TENSOR_ELEMENTS}"
        )
    count = math.prod(shape)
    if count > limits.MAX_TENSOR_ELEMENTS:
        raise BadRequestError(f"{label}: {count} elements exceed the limit of {limits.MAX_TENSOR_ELEMENTS}")
    dtype = _WIRE_NP_DTYPES[th.dtype]
    return dtype, shape, count * dtype.itemsize


# Layouts that passed _tensor_layout, by (dtype, shape): a daemon sees the same few again and
# again, so their checks run once (bounded; cleared when full, never holds a rejected layout).
_LAYOUTS: dict[tuple[str, tuple[int, ...]], tuple[np.dtype, tuple[int, ...], int]] = {}
LAYOUTS_MAX = 256


def _arrays(headers: Sequence[pb.TensorHeader], frames: Sequence[Frame], what: str) -> list[np.ndarray]:
    if len(frames) != len(headers):
        raise BadRequestError(f"{what} header lists {len(headers)} tensors but {len(frames)} tensor frames followed")
    arrays = []
    for i, (th, frame) in enumerate(zip(headers, frames)):
        key = (th.dtype, tuple(th.shape))
        layout = _LAYOUTS.get(key)
        if layout is None:
            layout = _tensor_layout(th, f"{what} tensor {th.name or i!r}")
            if len(_LAYOUTS) >= LAYOUTS_MAX:
                _LAYOUTS.clear()
            _LAYOUTS[key] = layout
        dtype, shape, nbytes = layout
        buf = _buffer(frame)
        if buf.nbytes != nbytes:
            raise BadRequestError(
                f"{what} tensor {th.name or i!r}: shape {list(shape)} of {th.dtype} needs {nbytes} "
                f"bytes but its frame has {buf.nbytes}"
            )
        arrays.append(np.frombuffer(buf, dtype=dtype).reshape(shape))
    return arrays


def decode_request(frames: Sequence[Frame]) -> tuple[pb.RequestHeader, list[np.ndarray]]:
    """Header and zero-copy input views; BadRequestError names whatever is wrong."""
    if not frames:
        raise BadRequestError("empty message: expected a header frame and tensor frames")
    if len(frames) > limits.MAX_FRAMES:
        raise BadRequestError(
            f"{len(frames)} frames exceed the limit of {limits.MAX_FRAMES} "
            f"(1 header + at most {limits.MAX_TENSORS_PER_REQUEST} tensors)"
        )
    total = sum(_buffer(f).nbytes for f in frames[1:])
    if total > limits.MAX_REQUEST_BYTES:
        raise BadRequestError(f"request tensors total {total} bytes; the limit is {limits.MAX_REQUEST_BYTES}")
    header = _parse(pb.RequestHeader(), frames[0], "request")
    if header.schema_version != limits.LOCAL_API_SCHEMA_VERSION:
        raise BadRequestError(
            f"schema_version {header.schema_version} is not supported "
            f"(this agent speaks {limits.LOCAL_API_SCHEMA_VERSION})"
        )
    if len(header.request_id) > limits.MAX_REQUEST_ID_CHARS:
        raise BadRequestError(f"request_id is longer than {limits.MAX_REQUEST_ID_CHARS} characters")
    try:
        return header, _arrays(header.inputs, frames[1:], "request")
    except BadRequestError as exc:
        exc.request_id = header.request_id  # so the error reply can still be matched by the client
        raise


def encode_reply(header: pb.ReplyHeader, outputs: Sequence[tuple[str, np.ndarray]] = ()) -> list[Any]:
    header.schema_version = limits.LOCAL_API_SCHEMA_VERSION
    if not outputs and not header.outputs:  # the usual reply: labels and confidences only
        return [header.SerializeToString()]
    arrays = [np.asarray(a) for _, a in outputs]
    del header.outputs[:]
    header.outputs.extend(tensor_header(n, a) for (n, _), a in zip(outputs, arrays))
    return [header.SerializeToString(), *tensor_frames(arrays)]


def error_reply(request_id: str, code: str, message: str) -> list[Any]:
    header = pb.ReplyHeader(
        request_id=request_id, source=pb.SOURCE_ERROR, error=pb.ErrorInfo(code=code, message=message)
    )
    return encode_reply(header)


def decode_reply(frames: Sequence[Frame]) -> tuple[pb.ReplyHeader, dict[str, np.ndarray]]:
    if not frames:
        raise BadRequestError("empty reply from the agent")
    header = _parse(pb.ReplyHeader(), frames[0], "reply")
    if len(frames) == 1 and not header.outputs:  # the usual reply: labels and confidences only
        return header, {}
    arrays = _arrays(header.outputs, frames[1:], "reply")
    return header, {th.name: a for th, a in zip(header.outputs, arrays)}


SOURCE_NAMES = {
    pb.SOURCE_EDGE: "edge",
    pb.SOURCE_CLOUD: "cloud",
    pb.SOURCE_EDGE_DEGRADED: "edge-degraded",
    pb.SOURCE_ERROR: "error",
    pb.SOURCE_UNSPECIFIED: "unspecified",
}
MODES = {
    "auto": pb.MODE_AUTO,
    "edge": pb.MODE_EDGE_ONLY,
    "edge-only": pb.MODE_EDGE_ONLY,
    "cloud": pb.MODE_CLOUD_ONLY,
    "cloud-only": pb.MODE_CLOUD_ONLY,
}
