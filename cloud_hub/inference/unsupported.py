"""What the hub does not offer of Triton's protocol, refused by name with what to do instead.

Triton clients call repository load/unload, shared-memory, trace and log methods and put
shared-memory regions on tensors; a plain "Method not found!" (gRPC) or a 404 whose body a
client cannot parse (REST), or worse an answer that ignores a region the client will read,
leaves the user guessing. Each refusal here is UNIMPLEMENTED (REST 501) with one sentence.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "inference.GRPCInferenceService"
SHARED_MEMORY_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

_SHM = (
    "{kind} shared memory is not supported by tandem-hub: send tensors in the request body "
    "(gRPC raw_input_contents, or REST binary data) and read them from the answer"
)
_REPOSITORY = (
    "model {action} is not supported by tandem-hub: it serves the model folders it was started with "
    "(tandem-hub serve --model-dir, or [models] dirs); restart it to change them"
)
# Triton's GRPCInferenceService methods that tandem-hub does not implement, with the refusal each answers.
METHODS: dict[str, str] = {
    "RepositoryModelLoad": _REPOSITORY.format(action="load"),
    "RepositoryModelUnload": _REPOSITORY.format(action="unload"),
    "SystemSharedMemoryStatus": _SHM.format(kind="system"),
    "SystemSharedMemoryRegister": _SHM.format(kind="system"),
    "SystemSharedMemoryUnregister": _SHM.format(kind="system"),
    "CudaSharedMemoryStatus": _SHM.format(kind="CUDA"),
    "CudaSharedMemoryRegister": _SHM.format(kind="CUDA"),
    "CudaSharedMemoryUnregister": _SHM.format(kind="CUDA"),
    "TraceSetting": "trace settings are not supported by tandem-hub: it exports spans over OTLP "
    "([tracing] otlp_endpoint in the hub config)",
    "LogSettings": "log settings are not supported by tandem-hub: set its level at start (tandem-hub --log-level)",
}


SHARED_MEMORY_REFUSAL = _SHM.format(kind="system and CUDA")


def shared_memory_refusal(request: Any) -> str | None:
    """Why a ModelInferRequest that names shared-memory regions on an input or an output is refused; None if
    it names none. The answer would otherwise come back in the body while the client reads its region."""
    for kind, tensors in (("input", request.inputs), ("output", request.outputs)):
        for tensor in tensors:
            if any(key in tensor.parameters for key in SHARED_MEMORY_PARAMS):
                return f"{kind} {tensor.name!r}: {SHARED_MEMORY_REFUSAL}"
    return None


class UnsupportedMethods(grpc.GenericRpcHandler):
    """Answers Triton's methods that the hub does not implement with UNIMPLEMENTED and the reason (registered
    after the generated v2 handler, so only methods it lacks reach here). `asynchronous` for a grpc.aio server,
    whose handlers are coroutines."""

    def __init__(self, asynchronous: bool = False) -> None:
        self.asynchronous = asynchronous

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = str(handler_call_details.method).lstrip("/").partition("/")
        reason = METHODS.get(method) if service == SERVICE else None
        if reason is None:
            return None
        if self.asynchronous:

            async def refuse_async(request: bytes, context: Any) -> bytes:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)
                return b""  # not reached: abort raises

            return grpc.unary_unary_rpc_method_handler(refuse_async)

        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)
            return b""  # not reached: abort raises

        return grpc.unary_unary_rpc_method_handler(refuse)  # raw bytes in and out: no message types needed
