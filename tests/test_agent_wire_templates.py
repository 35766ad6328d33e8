"""The clients' cached request headers (wire.RequestTemplates) say exactly what encode_request says."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.edge_agent.errors import BadRequestError
from tandem.edge_agent.wire import RequestTemplates, decode_reply, decode_request, encode_reply, encode_request
from tandem.protocols import limits
from tandem.protocols import local_api_pb2 as pb

_DTYPES = ["float32", "float16", "int8", "uint8", "int64", "bool"]


def _same_request(a: list, b: list) -> None:
    ha, xa = decode_request(a)
    hb, xb = decode_request(b)
    assert ha == hb
    assert len(xa) == len(xb)
    for u, v in zip(xa, xb):
        assert u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v)


@settings(max_examples=200, deadline=None)
@given(
    request_id=st.text(max_size=limits.MAX_REQUEST_ID_CHARS),
    model_name=st.text(max_size=20),
    threshold=st.none() | st.floats(0, 1, width=32),
    mode=st.sampled_from([pb.MODE_AUTO, pb.MODE_EDGE_ONLY, pb.MODE_CLOUD_ONLY]),
    return_outputs=st.booleans(),
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    named=st.booleans(),
)
def test_template_frames_decode_like_encode_request(
    request_id, model_name, threshold, mode, return_outputs, dtype, shape, named
):
    x = (np.arange(int(np.prod(shape)), dtype=np.int64) % 7).astype(dtype).reshape(shape)
    inputs = {"input": x, "other": x.copy()} if named else [x]
    kw = dict(
        request_id=request_id, model_name=model_name, threshold=threshold, mode=mode, return_outputs=return_outputs
    )
    templates = RequestTemplates()
    first = templates.frames(inputs, **kw)
    again = templates.frames(inputs, **{**kw, "request_id": request_id[::-1]})  # from the cached template
    _same_request(first, encode_request(inputs, **kw))
    _same_request(again, encode_request(inputs, **{**kw, "request_id": request_id[::-1]}))


def test_templates_keep_each_layout_apart_and_stay_bounded():
    templates = RequestTemplates(max_templates=4)
    for n in range(1, 12):  # more layouts than it keeps: it starts over, answers stay right
        x = np.ones((1, n), np.float32)
        header, (got,) = decode_request(templates.frames([x], request_id=f"r{n}", threshold=n / 20))
        assert list(header.inputs[0].shape) == [1, n] and header.request_id == f"r{n}"
        assert header.options.threshold == pytest.approx(n / 20) and got.shape == (1, n)
        assert len(templates._templates) <= 4


def test_templates_refuse_what_encode_request_refuses():
    templates = RequestTemplates()
    with pytest.raises(BadRequestError, match="dtype complex64 is not supported"):
        templates.frames([np.zeros(2, np.complex64)], request_id="a")
    with pytest.raises(BadRequestError, match="exceed the limit"):
        templates.frames([np.zeros(1, np.float32)] * (limits.MAX_TENSORS_PER_REQUEST + 1), request_id="a")
    # a refused layout is not cached: the next request with it is refused again
    with pytest.raises(BadRequestError):
        templates.frames([np.zeros(2, np.complex64)], request_id="b")


def test_big_endian_inputs_go_out_little_endian():
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    _, (got,) = decode_request(RequestTemplates().frames([x], request_id="be"))
    assert np.array_equal(got, x.astype("<f4"))


def test_reply_headers_decode_from_bytes_and_from_views():
    header = pb.ReplyHeader(request_id="r1", source=pb.SOURCE_EDGE, label=[3], confidence=[0.5])
    frames = encode_reply(header, [("probs", np.eye(2, dtype=np.float32))])
    as_bytes = [bytes(f) for f in frames]
    for form in (as_bytes, [memoryview(f) for f in as_bytes]):
        got, outputs = decode_reply(form)
        assert got.request_id == "r1" and list(got.label) == [3]
        assert np.array_equal(outputs["probs"], np.eye(2, dtype=np.float32))


def test_a_known_layout_still_checks_every_frame_size():
    good = encode_request([np.zeros((1, 4), np.float32)], request_id="ok")
    decode_request(good)  # the layout is now known
    with pytest.raises(BadRequestError, match=r"needs 16 bytes but its frame has 12"):
        decode_request([good[0], b"\0" * 12])
    with pytest.raises(BadRequestError, match="negative dimension"):  # never cached: refused every time
        for _ in range(2):
            header = pb.RequestHeader(
                schema_version=limits.LOCAL_API_SCHEMA_VERSION, inputs=[pb.TensorHeader(dtype="float32", shape=[-1, 4])]
            )
            decode_request([header.SerializeToString(), b""])


@settings(max_examples=150, deadline=None)
@given(
    request_id=st.text(max_size=limits.MAX_REQUEST_ID_CHARS),
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    fortran=st.booleans(),
    big_endian=st.booleans(),
)
def test_plain_frames_decode_like_encode_request(request_id, dtype, shape, fortran, big_endian):
    """RequestTemplates.plain (AgentClient's usual call) sends what encode_request sends, on its first call
    (the template is made) and later ones (an array passed as it is when it can be), for any layout."""
    array = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    if fortran:
        array = np.asfortranarray(array)
    if big_endian and array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder(">"))
    templates = RequestTemplates()
    longest = "r" * limits.MAX_REQUEST_ID_CHARS  # 128 bytes: past the one-byte length plain() writes itself
    for rid in (request_id, request_id[:-1] + "x", longest):
        _same_request(templates.plain(array, rid), encode_request([array], request_id=rid))
