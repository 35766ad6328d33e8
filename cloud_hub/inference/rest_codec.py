"""v2 REST inference bodies <-> the protobuf messages the servicer answers.

A REST request is a JSON header, optionally followed by the binary tensor data
extension (`Inference-Header-Content-Length` says where the JSON ends; each binary
input names its `binary_data_size`, in input order). Both are turned into one
ModelInferRequest with raw contents, so REST and gRPC share one decoder, one set of
limits and one error message per problem. Pure functions: no I/O here.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tandem.cloud_hub.inference.unsupported import SHARED_MEMORY_PARAMS, SHARED_MEMORY_REFUSAL
from tandem.protocols import config_loader
from tandem.protocols import inference_params as params
from tandem.protocols import inference_pb2 as pb
from tandem.protocols.tensor_codec import (
    DATATYPES,
    TensorCodecError,
    TensorLimits,
    check_shape,
    decode_response_outputs,
    dtype_of,
    to_raw,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"  # request parameter: every output as binary unless it says otherwise
_RESERVED = {BINARY_OUTPUT, "timeout"}


class RestBodyError(ValueError):
    """The REST body is malformed; the message says where."""


class UnsupportedEncodingError(RestBodyError):
    """The body's Content-Encoding is not one the hub decodes (HTTP 415)."""


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before its Content-Encoding (gzip, deflate, identity; several are undone last first),
    refused past `limit` bytes inflated: tritonclient.http compresses request bodies when asked
    (request_compression_algorithm), and a small gzip body can inflate to gigabytes."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, coding, 16 + zlib.MAX_WBITS, limit)
        elif coding == "deflate":  # zlib-wrapped as RFC 9110 says; some clients send it raw
            try:
                body = _inflate(body, coding, zlib.MAX_WBITS, limit)
            except _NotThatFormat:
                body = _inflate(body, coding, -zlib.MAX_WBITS, limit)
        else:
            raise UnsupportedEncodingError(
                f"Content-Encoding {coding!r} is not supported: send the body as gzip, deflate or identity"
            )
    return body


class _NotThatFormat(RestBodyError):
    pass


def _inflate(data: bytes, coding: str, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _NotThatFormat(f"the body is not valid {coding} data ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise RestBodyError(f"the {coding} body inflates past {limit} bytes")
    if not inflater.eof:
        raise RestBodyError(f"the {coding} body is truncated")
    return out


def header_length(value: str | None) -> int | None:
    """The Inference-Header-Content-Length header as a byte count (None: the body is all JSON)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise RestBodyError(f"{HEADER_LENGTH} {value!r} is not a byte count") from None


@dataclass(frozen=True)
class RestRequest:
    """A decoded REST inference request: the protobuf request, which outputs go back as binary, a timeout."""

    request: pb.ModelInferRequest
    binary_outputs: dict[str, bool]
    binary_default: bool
    timeout_s: float | None


def parse_infer_body(
    body: bytes, header_length: int | None, model: str, version: str, limits: TensorLimits
) -> RestRequest:
    """Decode a REST inference body (JSON, or JSON + binary tensors) into a ModelInferRequest."""
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise RestBodyError(f"{HEADER_LENGTH} is {header_length}, the body has {len(body)} bytes")
        header_bytes, binary = body[:header_length], body[header_length:]
    try:
        header = json.loads(header_bytes or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RestBodyError(f"the inference request is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RestBodyError("the inference request must be a JSON object with `inputs`")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RestBodyError("`inputs` must be a non-empty list of tensors")
    if len(inputs) > limits.max_tensors:
        raise TensorCodecError(f"{len(inputs)} input tensors exceed the limit of {limits.max_tensors}")
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=str(header.get("id", "")))
    request_params = _dict(header.get("parameters"), "parameters")
    for key, value in request_params.items():
        if key not in _RESERVED:
            _set_param(request.parameters, key, value)
    offset = 0
    for i, tensor in enumerate(inputs):
        tensor = _dict(tensor, f"inputs[{i}]")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise RestBodyError(f"inputs[{i}] has no name")
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if not isinstance(datatype, str):
            raise RestBodyError(f'input {name!r}: datatype must be a string such as "FP32"')
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise RestBodyError(f"input {name!r}: shape must be a list of integers")
        dtype_of(datatype, name)
        check_shape(name, shape, limits)
        tensor_params = _dict(tensor.get("parameters"), f"input {name!r} parameters")
        if any(key in tensor_params for key in SHARED_MEMORY_PARAMS):
            raise RestBodyError(f"input {name!r}: {SHARED_MEMORY_REFUSAL}")
        size = tensor_params.get(BINARY_SIZE)
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise RestBodyError(
                    f"input {name!r}: binary_data_size {size!r} runs past the {len(binary) - offset} binary bytes left"
                )
            data = binary[offset : offset + size]
            offset += size
        else:
            if "data" not in tensor:
                raise RestBodyError(f"input {name!r}: give `data` or parameters.binary_data_size")
            data = _json_to_raw(name, datatype, shape, tensor["data"], limits)
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(bytes(data))
    if offset != len(binary):
        raise RestBodyError(
            f"{len(binary) - offset} binary bytes after the last binary input; "
            "each binary input must give its binary_data_size"
        )
    binary_default = _param(bool, request_params.get(BINARY_OUTPUT, False), f"parameters.{BINARY_OUTPUT}")
    binary_outputs: dict[str, bool] = {}
    for i, out in enumerate(header.get("outputs") or []):
        out = _dict(out, f"outputs[{i}]")
        name = out.get("name")
        if not isinstance(name, str) or not name:
            raise RestBodyError(f"outputs[{i}] has no name")
        wanted = request.outputs.add(name=name)
        out_params = _dict(out.get("parameters"), f"output {name!r} parameters")
        for key, value in out_params.items():
            if key == "binary_data":
                binary_outputs[name] = _param(bool, value, f"output {name!r} parameters.binary_data")
            else:
                _set_param(wanted.parameters, key, value)
    timeout_us = _param(float | None, request_params.get("timeout"), "parameters.timeout")  # microseconds
    timeout_s = timeout_us / 1e6 if timeout_us is not None and timeout_us > 0 else None
    return RestRequest(request, binary_outputs, binary_default, timeout_s)


def encode_infer_response(response: pb.ModelInferResponse, rest: RestRequest) -> tuple[bytes, int | None]:
    """The REST answer: (body, JSON header length when binary tensors follow it, else None)."""
    arrays = decode_response_outputs(response)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if rest.binary_outputs.get(tensor.name, rest.binary_default):
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _to_json_data(arrays[tensor.name])
        outputs.append(entry)
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        header["id"] = response.id
    extras = {k: params.parameter_value(v) for k, v in response.parameters.items()}
    if extras:
        header["parameters"] = extras
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RestBodyError(f"{where} must be a JSON object")
    return value


def _param(hint: Any, value: Any, where: str) -> Any:
    """A request parameter as `hint` types it, by the config loader's coercion (JSON's own types only, so
    "false" is not true and a string is not a timeout); RestBodyError naming the parameter otherwise."""
    try:
        return config_loader.coerce(hint, value)
    except (TypeError, ValueError) as exc:
        raise RestBodyError(f"{where}: {exc}, got {value!r}") from None


def _set_param(target: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    elif isinstance(value, str):
        target[key].string_param = value
    else:
        raise RestBodyError(f"parameter {key!r}: must be a bool, number or string")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: a hostile 10,000-deep nesting must not overflow the stack
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _json_to_raw(name: str, datatype: str, shape: Sequence[int], data: Any, limits: TensorLimits) -> bytes:
    count = math.prod(shape)
    values = _flatten(data)
    if len(values) != count:
        raise TensorCodecError(
            f"tensor {name!r}: {len(values)} values in `data` do not match shape {list(shape)} ({count} elements)"
        )
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise TensorCodecError(f"tensor {name!r}: BYTES `data` must be strings")
        array = np.empty(count, dtype=object)
        array[:] = [v.encode("utf-8") for v in values]
    else:
        kinds = (bool,) if datatype == "BOOL" else (int, float) if datatype.startswith(("FP", "BF")) else (int,)
        if not all(isinstance(v, kinds) and (datatype == "BOOL" or not isinstance(v, bool)) for v in values):
            raise TensorCodecError(f"tensor {name!r}: `data` holds values that are not {datatype}")
        dt = DATATYPES[datatype]
        if dt.kind in "iu" and count:
            info = np.iinfo(dt)
            if min(values) < info.min or max(values) > info.max:
                raise TensorCodecError(f"tensor {name!r}: values outside the {datatype} range [{info.min}, {info.max}]")
        array = np.asarray(values, dtype=np.float64 if datatype.startswith("BF") else dt).astype(dt)
    return to_raw(name, array.reshape(list(shape)), limits)[2]


def _to_json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if array.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if array.dtype.kind == "V" or array.dtype.kind == "f":  # BF16 (ml_dtypes) and floats as JSON numbers
        return [float(v) for v in flat.astype(np.float64)]
    return flat.tolist()
