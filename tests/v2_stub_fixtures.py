"""A small third-party v2 server for the fallback client's error paths: a real gRPC server speaking
the KServe v2 GRPCInferenceService whose ModelInfer always aborts with one status, as a stock server
(KServe's ModelServer, a hub without the model) answers the request it cannot serve. It gives any
status at once and in-process; tests/test_fallback_kserve.py runs KServe's own server (from
build/kserve-venv) for the cases it really produces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc

Message = Callable[[pb.ModelInferRequest], str]
StartAborting = Callable[[grpc.StatusCode, Message], str]


class _AbortingServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, code: grpc.StatusCode, message: Message) -> None:
        self._code = code
        self._message = message

    def ModelInfer(self, request, context):  # noqa: N802 (gRPC's naming)
        context.abort(self._code, self._message(request))


@pytest.fixture
def aborting_v2_server() -> Iterator[StartAborting]:
    """Start(code, message) -> "127.0.0.1:port" of a v2 server whose every ModelInfer aborts so."""
    servers: list[grpc.Server] = []

    def start(code: grpc.StatusCode, message: Message) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_AbortingServicer(code, message), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)
