"""Bad requests get an error reply that names the problem, and the agent keeps serving."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from agent_fixtures import make_model_dir
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.errors import BadRequestError
from tandem.edge_agent.wire import decode_reply, encode_request
from tandem.protocols import limits
from tandem.protocols import local_api_pb2 as pb


@pytest.fixture(scope="module")
def agent(digits_dir, tmp_path_factory):
    model_dir = make_model_dir(digits_dir / "edge.onnx", tmp_path_factory.mktemp("model") / "digits")
    run = tmp_path_factory.mktemp("run")
    # inline_max_us=0, solo_inline_max_us=0: every request goes through the batcher's worker thread
    # (the serving tests cover inline runs)
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "server.endpoint": f"ipc://{run}/agent.sock",
            "hard_examples.data_dir": run / "data",
            "batch.inline_max_us": 0,
            "batch.solo_inline_max_us": 0,
        }
    )
    with Agent(cfg) as a:
        yield a


@pytest.fixture()
def raw(agent):
    """A bare DEALER socket, to send what no well-behaved client would."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(agent.endpoint)
    yield sock
    sock.close(0)


def roundtrip(sock, frames) -> pb.ReplyHeader:
    sock.send_multipart(frames, copy=False)
    assert sock.poll(5000), "the agent did not answer"
    header, _ = decode_reply(sock.recv_multipart())
    return header


def still_serving(agent) -> None:
    with AgentClient(agent.endpoint) as client:
        answer = client.infer({"input": np.zeros((1, 64), np.float32)})
    assert answer.source == "edge" and len(answer.labels) == 1


def header_bytes(**fields) -> bytes:
    fields.setdefault("schema_version", limits.LOCAL_API_SCHEMA_VERSION)
    return pb.RequestHeader(**fields).SerializeToString()


def tensor(name: str, dtype: str, shape: list[int]) -> pb.TensorHeader:
    return pb.TensorHeader(name=name, dtype=dtype, shape=shape)


CASES = {
    "wrong shape": (lambda: encode_request({"input": np.zeros((1, 63), np.float32)}), "shape [1, 63]"),
    "wrong rank": (lambda: encode_request({"input": np.zeros((64,), np.float32)}), "expects [N, 64]"),
    "wrong dtype": (lambda: encode_request({"input": np.zeros((1, 64), np.float64)}), "dtype float64"),
    "NaN": (lambda: encode_request({"input": np.full((1, 64), np.nan, np.float32)}), "NaN"),
    "infinity": (lambda: encode_request({"input": np.full((1, 64), np.inf, np.float32)}), "infinity"),
    "unknown input name": (lambda: encode_request({"pixels": np.zeros((1, 64), np.float32)}), "'pixels'"),
    "missing input": (lambda: encode_request({}), "takes 1 input"),
    "unknown model": (
        lambda: encode_request({"input": np.zeros((1, 64), np.float32)}, model_name="resnet"),
        "unknown model 'resnet'",
    ),
    "garbage header": (lambda: [b"\xff\xfe\x00garbage-not-protobuf", b"1234"], "not a valid RequestHeader"),
    "too many frames": (lambda: [header_bytes()] + [b"x"] * limits.MAX_FRAMES, "frames exceed the limit"),
    "frame shorter than its shape": (
        lambda: [header_bytes(inputs=[tensor("input", "float32", [1, 64])]), b"\0" * 100],
        "needs 256 bytes",
    ),
    "header lists more tensors than frames": (
        lambda: [header_bytes(inputs=[tensor("input", "float32", [1, 64])] * 2), b"\0" * 256],
        "lists 2 tensors",
    ),
    "unsupported dtype": (lambda: [header_bytes(inputs=[tensor("input", "complex64", [1])]), b"\0" * 8], "'complex64'"),
    "negative dimension": (
        lambda: [header_bytes(inputs=[tensor("input", "float32", [-1, 64])]), b""],
        "negative dimension",
    ),
    "rank over the limit": (lambda: [header_bytes(inputs=[tensor("input", "float32", [1] * 9)]), b"\0" * 4], "rank 9"),
    "too many elements": (
        lambda: [header_bytes(inputs=[tensor("input", "float32", [1 << 20, 64])]), b"\0" * 4],
        "elements exceed the limit",
    ),
    "wrong schema version": (lambda: [header_bytes(schema_version=99)], "schema_version 99"),
    "threshold out of range": (
        lambda: encode_request({"input": np.zeros((1, 64), np.float32)}, threshold=1.5),
        "threshold 1.5",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_gets_an_error_naming_the_problem_and_the_agent_keeps_serving(agent, raw, case):
    make_frames, expected = CASES[case]
    header = roundtrip(raw, make_frames())
    assert header.source == pb.SOURCE_ERROR
    assert header.error.code == "bad_request"
    assert expected in header.error.message, header.error.message
    still_serving(agent)


def test_oversized_request_is_refused_with_the_limit_named(agent, raw):
    rows = limits.MAX_REQUEST_BYTES // (64 * 4) + 1
    big = np.zeros((rows, 64), np.float32)  # one frame just over the request limit
    frames = [header_bytes(inputs=[tensor("input", "float32", [rows, 64])]), memoryview(big).cast("B")]
    header = roundtrip(raw, frames)
    assert header.error.code == "bad_request"
    assert str(limits.MAX_REQUEST_BYTES) in header.error.message
    still_serving(agent)


def test_error_reply_keeps_the_request_id(agent, raw):
    header = roundtrip(raw, encode_request({"input": np.zeros((1, 63), np.float32)}, request_id="abc-1"))
    assert header.request_id == "abc-1"


def test_client_raises_the_agents_error_type_with_its_message(agent):
    with AgentClient(agent.endpoint) as client:
        with pytest.raises(BadRequestError, match=r"input 'input': shape \[2, 8\], the model expects \[N, 64\]"):
            client.infer({"input": np.zeros((2, 8), np.float32)})
        assert client.infer({"input": np.zeros((1, 64), np.float32)}).source == "edge"


def test_client_checks_limits_before_sending():
    with pytest.raises(BadRequestError, match="dtype complex64"):
        encode_request({"x": np.zeros(2, np.complex64)})
    with pytest.raises(BadRequestError, match="input tensors exceed"):
        encode_request([np.zeros(1, np.float32)] * (limits.MAX_TENSORS_PER_REQUEST + 1))


def test_req_sockets_work_too(agent):
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(agent.endpoint)
        sock.send_multipart(encode_request({"input": np.zeros((1, 64), np.float32)}, request_id="req-1"), copy=False)
        assert sock.poll(5000)
        header, _ = decode_reply(sock.recv_multipart())
        assert header.request_id == "req-1" and header.source == pb.SOURCE_EDGE
    finally:
        sock.close(0)


def test_garbage_burst_from_many_sockets_does_not_stop_good_clients(agent):
    ctx = zmq.Context.instance()
    socks = [ctx.socket(zmq.DEALER) for _ in range(8)]
    try:
        for s in socks:
            s.setsockopt(zmq.LINGER, 0)
            s.connect(agent.endpoint)
            for k in range(20):
                s.send_multipart([bytes([k]) * (k + 1), b"\x00" * k])
        still_serving(agent)
        for s in socks:
            got = 0
            while got < 20 and s.poll(2000):
                header, _ = decode_reply(s.recv_multipart())
                assert header.source == pb.SOURCE_ERROR
                got += 1
            assert got == 20
    finally:
        for s in socks:
            s.close(0)
