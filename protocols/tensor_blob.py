"""The hard-example tensor blob: a JSON index line [[name, dtype, shape], ...], then raw C-order bytes.

The agent writes it (cheap: no zip, no pickle); the hub decodes it from untrusted devices,
so `decode_index` checks everything before a byte is interpreted: numeric dtypes only,
bounded counts and dims, names that are safe as .npz member paths, and a byte count that
matches the index exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from tandem.protocols import limits
from tandem.protocols.errors import ContractError

__all__ = [
    "DTYPE_KINDS",
    "MAX_INDEX_BYTES",
    "MAX_NAME",
    "TensorBlobError",
    "TensorInfo",
    "decode_index",
    "decode_tensors",
    "encode_tensors",
]

DTYPE_KINDS = "biufc"  # bool, ints, floats, complex: nothing that needs pickle
MAX_INDEX_BYTES = 64 * 1024
MAX_NAME = 256


class TensorBlobError(ContractError):
    """A tensor blob that does not match its own index; the message says what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def encode_tensors(inputs: Mapping[str, np.ndarray]) -> bytes:
    arrays = {k: np.asarray(v, order="C") for k, v in inputs.items()}  # (ascontiguousarray turns 0-d into 1-d)
    index = [[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()]
    return json.dumps(index).encode() + b"\n" + b"".join(a.tobytes() for a in arrays.values())


def decode_index(blob: bytes) -> tuple[tuple[TensorInfo, ...], int]:
    """The checked index and the offset of the first tensor's bytes; TensorBlobError otherwise."""
    head, sep, body = blob.partition(b"\n")
    if not sep or len(head) > MAX_INDEX_BYTES:
        raise TensorBlobError("tensors: expected a JSON index line, then the raw bytes")
    try:
        index = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise TensorBlobError(f"tensors: index is not JSON ({exc})") from exc
    if not isinstance(index, list) or len(index) > limits.MAX_TENSORS_PER_REQUEST:
        raise TensorBlobError(f"tensors: expected a list of at most {limits.MAX_TENSORS_PER_REQUEST} tensors")
    out, total, names = [], 0, set()
    for entry in index:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
            and isinstance(entry[2], list)
        ):
            raise TensorBlobError("tensors: each index entry is [name, dtype, shape]")
        name, dtype_str, shape = entry
        if (
            not name
            or len(name) > MAX_NAME
            or name in names
            or name.startswith(".")
            or any(c in "/\\" or ord(c) < 32 for c in name)
        ):  # names become .npz member paths
            raise TensorBlobError(f"tensors: bad or repeated name {name[:64]!r}")
        names.add(name)
        try:
            dtype = np.dtype(dtype_str) if len(dtype_str) <= 8 else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in DTYPE_KINDS:
            raise TensorBlobError(f"tensors: {name}: dtype {dtype_str[:16]!r} is not numeric")
        if len(shape) > limits.MAX_TENSOR_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limits.MAX_TENSOR_ELEMENTS for d in shape
        ):
            raise TensorBlobError(f"tensors: {name}: bad shape")
        info = TensorInfo(name, dtype.str, tuple(shape))
        if info.count > limits.MAX_TENSOR_ELEMENTS:
            raise TensorBlobError(f"tensors: {name}: over MAX_TENSOR_ELEMENTS")
        total += info.count * dtype.itemsize
        out.append(info)
    if total != len(body):
        raise TensorBlobError(f"tensors: the index says {total} bytes, {len(body)} follow")
    return tuple(out), len(head) + 1


def decode_tensors(blob: bytes, copy: bool = True) -> dict[str, np.ndarray]:
    """name -> array; views into `blob` unless `copy`."""
    index, offset = decode_index(blob)
    out = {}
    for t in index:
        dtype = np.dtype(t.dtype)
        array = np.frombuffer(blob, dtype=dtype, count=t.count, offset=offset).reshape(t.shape)
        out[t.name] = array.copy() if copy else array
        offset += t.count * dtype.itemsize
    return out
