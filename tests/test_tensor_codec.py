"""protocols.tensor_codec: round-trips of every datatype, and rejection of malformed tensors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tandem.protocols import inference_pb2 as pb
from tandem.protocols import tensor_codec as tc

DTYPES = [np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def arrays_of(dtype):
    return hnp.arrays(dtype=dtype, shape=shapes)


any_array = st.sampled_from(DTYPES).flatmap(arrays_of)
typed_array = st.sampled_from([d for d in DTYPES if d is not np.float16]).flatmap(arrays_of)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@settings(max_examples=150, deadline=None)
@given(any_array)
def test_raw_round_trip_keeps_dtype_shape_and_values(array):
    datatype, shape, data = tc.to_raw("x", array)
    assert tc.dtype_of(datatype) == array.dtype.newbyteorder("<") or array.dtype.itemsize == 1
    back = tc.from_raw("x", datatype, shape, data)
    assert same(back, array)


@settings(max_examples=150, deadline=None)
@given(typed_array)
def test_typed_contents_round_trip(array):
    contents = pb.InferTensorContents()
    datatype, shape = tc.to_contents("x", array, contents)
    wire = pb.InferTensorContents.FromString(contents.SerializeToString())
    assert same(tc.from_contents("x", datatype, shape, wire), array)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=6), any_array, min_size=1, max_size=4), st.booleans())
def test_request_round_trip_through_the_wire(inputs, raw):
    if not raw:
        inputs = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in inputs.items()}
    request = pb.ModelInferRequest(model_name="m")
    tc.encode_request_inputs(request, inputs, raw=raw)
    decoded = tc.decode_request_inputs(pb.ModelInferRequest.FromString(request.SerializeToString()))
    assert list(decoded) == list(inputs)
    for name, array in inputs.items():
        assert same(decoded[name], array)


def test_big_endian_input_is_sent_little_endian():
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    datatype, shape, data = tc.to_raw("x", array)
    assert datatype == "FP32" and data == array.astype("<f4").tobytes()
    assert same(tc.from_raw("x", datatype, shape, data), array.astype("<f4"))


def test_response_round_trip():
    response = pb.ModelInferResponse(model_name="m")
    outputs = {
        "probabilities": np.random.default_rng(0).random((3, 10), dtype=np.float32),
        "label": np.array([1, 2, 3], dtype=np.int64),
    }
    tc.encode_response_outputs(response, outputs)
    back = tc.decode_response_outputs(pb.ModelInferResponse.FromString(response.SerializeToString()))
    assert all(same(back[k], v) for k, v in outputs.items())


@settings(max_examples=100, deadline=None)
@given(any_array, st.integers(min_value=-3, max_value=3).filter(lambda d: d != 0))
def test_raw_bytes_that_do_not_match_the_shape_are_rejected(array, delta):
    datatype, shape, data = tc.to_raw("pixels", array)
    bad = data + b"\0" * delta if delta > 0 else data[:delta]
    if len(bad) == len(data):  # an empty tensor cannot lose bytes
        return
    with pytest.raises(tc.TensorCodecError, match=r"'pixels'.*raw bytes do not match"):
        tc.from_raw("pixels", datatype, shape, bad)


@given(st.text(min_size=1, max_size=8).filter(lambda s: s not in tc.DATATYPES))
def test_unknown_datatypes_are_rejected(datatype):
    with pytest.raises(tc.TensorCodecError, match="unknown datatype"):
        tc.from_raw("x", datatype, [1], b"\0\0\0\0")


@settings(max_examples=100, deadline=None)
@given(typed_array.filter(lambda a: a.size > 0), st.integers(min_value=1, max_value=3))
def test_typed_contents_with_the_wrong_count_are_rejected(array, extra):
    contents = pb.InferTensorContents()
    datatype, shape = tc.to_contents("x", array, contents)
    field = tc._CONTENTS_FIELD[datatype]
    values = list(getattr(contents, field))
    contents.ClearField(field)
    getattr(contents, field).extend(values + values[:1] * extra)
    with pytest.raises(tc.TensorCodecError, match="do not match shape"):
        tc.from_contents("x", datatype, shape, contents)


def test_typed_values_in_the_wrong_field_or_range_are_rejected():
    contents = pb.InferTensorContents(int64_contents=[1, 2])
    with pytest.raises(tc.TensorCodecError, match="belong in fp32_contents"):
        tc.from_contents("x", "FP32", [2], contents)
    with pytest.raises(tc.TensorCodecError, match="outside the INT8 range"):
        tc.from_contents("x", "INT8", [2], pb.InferTensorContents(int_contents=[1, 300]))
    with pytest.raises(tc.TensorCodecError, match="send raw bytes"):
        tc.from_contents("x", "FP16", [1], pb.InferTensorContents())


def test_bool_bytes_other_than_0_or_1_are_rejected():
    with pytest.raises(tc.TensorCodecError, match="BOOL bytes must be 0 or 1"):
        tc.from_raw("mask", "BOOL", [3], b"\x00\x01\x07")


def test_limits_are_enforced_before_allocating():
    small = tc.TensorLimits(max_elements=100, max_bytes=256, max_dims=3, max_tensors=2)
    with pytest.raises(tc.TensorCodecError, match="exceeds the limit of 100"):
        tc.from_raw("x", "UINT8", [10, 11], b"", small)
    with pytest.raises(tc.TensorCodecError, match="bytes exceeds the limit of 256"):
        tc.from_raw("x", "INT64", [40], b"\0" * 320, small)
    with pytest.raises(tc.TensorCodecError, match="at most 3 allowed"):
        tc.from_raw("x", "UINT8", [1, 1, 1, 1], b"\0", small)
    with pytest.raises(tc.TensorCodecError, match="negative dimension"):
        tc.from_raw("x", "UINT8", [-1, 4], b"\0" * 4, small)
    # A shape claiming 2**62 elements must be refused without trying to allocate it.
    with pytest.raises(tc.TensorCodecError, match="exceeds the limit"):
        tc.from_raw("x", "FP32", [2**31, 2**31], b"")
    request = pb.ModelInferRequest()
    for i in range(3):
        request.inputs.add(name=f"t{i}", datatype="UINT8", shape=[1])
        request.raw_input_contents.append(b"\0")
    with pytest.raises(tc.TensorCodecError, match="3 input tensors exceed the limit of 2"):
        tc.decode_request_inputs(request, small)


def test_malformed_requests_name_the_problem():
    request = pb.ModelInferRequest()
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(tc.TensorCodecError, match="1 raw contents for 2 input tensors"):
        tc.decode_request_inputs(request)

    request = pb.ModelInferRequest()
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.raw_input_contents.extend([b"\0" * 4, b"\0" * 4])
    with pytest.raises(tc.TensorCodecError, match="appears twice"):
        tc.decode_request_inputs(request)

    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="a", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    request.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(tc.TensorCodecError, match="use one form"):
        tc.decode_request_inputs(request)


def test_unsupported_numpy_dtypes_are_refused_on_encode():
    with pytest.raises(tc.TensorCodecError, match="no Tandem v2 datatype"):
        tc.to_raw("x", np.zeros(2, dtype=np.complex64))
    with pytest.raises(tc.TensorCodecError, match="send it as raw bytes"):
        tc.to_contents("x", np.zeros(2, dtype=np.float16), pb.InferTensorContents())


def test_decoded_raw_tensors_are_read_only_views():
    data = np.arange(4, dtype="<f4").tobytes()
    array = tc.from_raw("x", "FP32", [2, 2], data)
    assert not array.flags.writeable
