"""protocols.tensor_codec: every standard v2 datatype round-trips (raw and typed), BYTES framing, named errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tandem.protocols import inference_pb2 as pb
from tandem.protocols import tensor_codec as tc

NUMERIC = {"UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "INT16": np.int16, "FP64": np.float64}


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_wider_numeric_datatypes_round_trip_raw_and_typed(datatype):
    dt = np.dtype(NUMERIC[datatype])
    info = np.finfo(dt) if dt.kind == "f" else np.iinfo(dt)
    array = np.array([[info.min, 0], [1, info.max]], dtype=dt)
    got, shape, data = tc.to_raw("x", array)
    assert got == datatype and shape == [2, 2]
    np.testing.assert_array_equal(tc.from_raw("x", got, shape, data), array)
    contents = pb.InferTensorContents()
    assert tc.to_contents("x", array, contents)[0] == datatype
    wire = pb.InferTensorContents.FromString(contents.SerializeToString())
    back = tc.from_contents("x", datatype, shape, wire)
    assert back.dtype == dt and np.array_equal(back, array)


def test_typed_uint16_out_of_range_is_refused_with_the_tensor_name():
    with pytest.raises(tc.TensorCodecError, match=r"'ids'.*outside the UINT16 range"):
        tc.from_contents("ids", "UINT16", [2], pb.InferTensorContents(uint_contents=[1, 70000]))


def test_bytes_raw_framing_is_length_prefixed_and_round_trips():
    array = np.array([b"abc", b"", "h\u00e9".encode()], dtype=object)
    datatype, shape, data = tc.to_raw("text", array)
    assert datatype == "BYTES" and shape == [3]
    assert data == struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0) + struct.pack("<I", 3) + "h\u00e9".encode()
    assert list(tc.from_raw("text", "BYTES", [3], data)) == list(array)
    contents = pb.InferTensorContents()
    tc.to_contents("text", np.array(["a", "bc"], dtype=object), contents)
    assert list(tc.from_contents("text", "BYTES", [2], contents)) == [b"a", b"bc"]


@pytest.mark.parametrize(
    "data, problem",
    [
        (struct.pack("<I", 5) + b"abc", "claims 5 bytes"),
        (struct.pack("<I", 1) + b"a", "end after 1 of 2"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"zz", "left over"),
    ],
)
def test_malformed_bytes_are_refused_naming_the_tensor(data, problem):
    with pytest.raises(tc.TensorCodecError, match=rf"'prompt'.*{problem}"):
        tc.from_raw("prompt", "BYTES", [2], data)


def test_bf16_round_trips_raw_when_ml_dtypes_is_installed():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    array = np.array([1.5, -2.0, 3.140625], dtype=ml_dtypes.bfloat16)
    datatype, shape, data = tc.to_raw("h", array)
    assert datatype == "BF16" and len(data) == 6
    assert np.array_equal(tc.from_raw("h", "BF16", shape, data).astype(np.float32), array.astype(np.float32))
    with pytest.raises(tc.TensorCodecError, match=r"'h'.*send it as raw bytes"):
        tc.to_contents("h", array, pb.InferTensorContents())


def test_every_standard_datatype_is_known_and_errors_name_the_tensor():
    assert set(tc.STANDARD_DATATYPES) - set(tc.DATATYPES) <= {"BF16"}
    with pytest.raises(tc.TensorCodecError, match=r"tensor 'pixels': unknown datatype 'FP8'"):
        tc.from_raw("pixels", "FP8", [1], b"\0")
    with pytest.raises(tc.TensorCodecError, match=r"tensor 'z': dtype complex64"):
        tc.to_raw("z", np.zeros(2, dtype=np.complex64))


def test_an_empty_batch_round_trips():
    array = np.zeros((0, 64), dtype=np.float32)
    datatype, shape, data = tc.to_raw("input", array)
    assert shape == [0, 64] and data == b""
    assert tc.from_raw("input", datatype, shape, data).shape == (0, 64)
