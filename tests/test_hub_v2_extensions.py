"""The pure parts of the hub's v2 extensions: Triton's classification answer, request body decoding, and the
refusals of what the hub lacks on a grpc.aio server (the threaded one: tests/test_hub_v2_protocol.py)."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import grpc
import numpy as np
import pytest

from tandem.cloud_hub.inference.classification import ClassificationError, labels_of, top_classes
from tandem.cloud_hub.inference.rest_codec import (
    RestBodyError,
    UnsupportedEncodingError,
    decode_content,
    header_length,
)
from tandem.cloud_hub.inference.unsupported import METHODS, SERVICE, UnsupportedMethods


def test_top_classes_ranks_each_row_with_labels_and_ties_by_index():
    scores = np.array([[0.1, 0.7, 0.2], [0.4, 0.4, 0.2]], np.float32)
    assert top_classes("y", scores, 2).tolist() == [[b"0.700000:1", b"0.200000:2"], [b"0.400000:0", b"0.400000:1"]]
    assert top_classes("y", scores, 1, ("cat", "dog", "eel")).tolist() == [[b"0.700000:1:dog"], [b"0.400000:0:cat"]]
    assert top_classes("y", scores[0], 5).tolist() == [b"0.700000:1", b"0.200000:2", b"0.100000:0"]  # 1-D, k clamped
    assert top_classes("ids", np.array([[3, 9]], np.int64), 1).tolist() == [[b"9:1"]]
    assert top_classes("y", np.zeros((0, 3), np.float32), 2).shape == (0, 2)
    assert top_classes("y", np.arange(8, dtype=np.float32).reshape(1, 2, 4), 1).tolist() == [[b"7.000000:7"]]
    with pytest.raises(ClassificationError, match="output 's'.*no classes to rank"):
        top_classes("s", np.array([[b"a"]], dtype=object), 1)


def test_labels_come_from_the_manifests_classification_task_only():
    assert labels_of({"kind": "classification", "output": "p", "labels": ["a", "b"]}, ["logits", "p"]) == {
        "p": ("a", "b")
    }
    assert labels_of({"kind": "classification", "labels": [0, 1]}, ["y"]) == {"y": (0, 1)}
    assert labels_of({"kind": "classification"}, ["y"]) == {}
    assert labels_of({"kind": "no-such-kind"}, ["y"]) == {}
    assert labels_of(None, ["y"]) == {}


def test_request_bodies_are_inflated_within_the_limit():
    body = b'{"inputs": []}'
    assert decode_content(gzip.compress(body), "gzip", 1000) == body
    assert decode_content(zlib.compress(body), "Deflate", 1000) == body
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_content(raw.compress(body) + raw.flush(), "deflate", 1000) == body  # raw deflate, as some send
    assert decode_content(gzip.compress(zlib.compress(body)), "deflate, gzip", 1000) == body  # undone last first
    assert decode_content(body, "identity", 1000) == body and decode_content(body, None, 1000) == body
    with pytest.raises(UnsupportedEncodingError, match="Content-Encoding 'br' is not supported"):
        decode_content(body, "br", 1000)
    with pytest.raises(RestBodyError, match="inflates past 100 bytes"):
        decode_content(gzip.compress(b"\0" * 101), "gzip", 100)
    with pytest.raises(RestBodyError, match="truncated"):
        decode_content(gzip.compress(body)[:-12], "gzip", 1000)
    with pytest.raises(RestBodyError, match="not valid gzip data"):
        decode_content(body, "gzip", 1000)
    assert header_length(None) is None and header_length("12") == 12
    with pytest.raises(RestBodyError, match="Inference-Header-Content-Length 'x' is not a byte count"):
        header_length("x")


def test_an_aio_server_refuses_what_the_hub_lacks_by_name():
    async def call() -> list[tuple[grpc.StatusCode, str]]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((UnsupportedMethods(asynchronous=True),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                out = []
                for method in ("RepositoryModelLoad", "SystemSharedMemoryStatus", "ModelInfer"):
                    try:
                        await channel.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=5)
                    except grpc.aio.AioRpcError as err:
                        out.append((err.code(), err.details()))
                return out
        finally:
            await server.stop(None)

    load, shm, infer = asyncio.run(call())
    assert load == (grpc.StatusCode.UNIMPLEMENTED, METHODS["RepositoryModelLoad"])
    assert shm == (grpc.StatusCode.UNIMPLEMENTED, METHODS["SystemSharedMemoryStatus"])
    assert infer[0] == grpc.StatusCode.UNIMPLEMENTED and infer[1] != METHODS["RepositoryModelLoad"]  # not ours
