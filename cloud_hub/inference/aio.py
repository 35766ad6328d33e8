"""The v2 gRPC service on grpc.aio: no thread hand-off per call, an admission limit apart from threads.

The threaded server handed each call to a pool thread, then to the model's batcher
thread and back (about four hand-offs, most of the busy time waiting on locks), and its
concurrency limit was its pool size. Here calls run on one event loop in a thread of
their own: a model measured faster than `inline_max_us` runs right there when its
batcher is idle; bigger ones go to the batcher and the call awaits its future. At most
`max_concurrent_rpcs` ModelInfer calls are held; past that a caller is told
RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`. The steps are the servicer's
(`prepare`, `run_inline`, `submit`, `complete`), shared with REST and the threaded server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import grpc
import grpc.aio

from tandem.cloud_hub.inference import describe
from tandem.cloud_hub.inference.admission import Admission
from tandem.cloud_hub.inference.health import INFERENCE_SERVICE, add_reflection
from tandem.cloud_hub.inference.unsupported import UnsupportedMethods
from tandem.cloud_hub.inference.servicer import RETRY_PUSHBACK_KEY, InferenceServicer, Prepared, RpcFailure
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
_MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"


class AioInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 methods as coroutines over the synchronous core `InferenceServicer`."""

    def __init__(self, core: InferenceServicer, admission: Admission) -> None:
        self.core = core
        self.admission = admission

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return self.core.ServerReady(request, context)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return self.core.ModelReady(request, context)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return self.core.ServerMetadata(request, context)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return await _or_abort(
            context, lambda: describe.model_metadata(self.core.resolve(request.name, request.version))
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return await _or_abort(
            context,
            lambda: pb.ModelConfigResponse(
                config=describe.model_config(self.core.resolve(request.name, request.version))
            ),
        )

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        return await _or_abort(context, lambda: self.core.statistics(request.name, request.version))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return self.core.RepositoryIndex(request, context)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        core = self.core
        span, parent = core.spans.start(context.invocation_metadata())
        start = time.perf_counter()
        code = "OK"
        admitted = self.admission.enter()
        try:
            if not admitted:
                pushback = self.admission.pushback_ms()
                failure = RpcFailure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"hub is overloaded: {self.admission.limit} calls in flight "
                    f"([grpc] max_concurrent_rpcs); retry in {pushback} ms",
                    retry_after_ms=pushback,
                )
                core.note_failure(request.model_name, failure)
                raise failure
            return await self.answer(request, context.time_remaining())
        except RpcFailure as failure:
            code = failure.code.name
            log.debug("ModelInfer model=%s id=%s -> %s: %s", request.model_name, request.id, code, failure.message)
            trailing = () if failure.retry_after_ms is None else ((RETRY_PUSHBACK_KEY, str(failure.retry_after_ms)),)
            await context.abort(failure.code, failure.message, trailing)
            raise  # abort raised already
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            seconds = time.perf_counter() - start
            if admitted:
                self.admission.leave(seconds)
            core.spans.finish(_MODEL_INFER, span, parent, request.model_name, code, seconds)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One answer per request, in order; a failed request answers error_message and the stream goes on."""
        async for request in requests:
            try:
                response = await self.answer(request, context.time_remaining())
            except RpcFailure as failure:
                yield pb.ModelStreamInferResponse(error_message=f"{failure.code.name}: {failure.message}")
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    async def answer(self, request: pb.ModelInferRequest, timeout_s: float | None) -> pb.ModelInferResponse:
        """The servicer's `answer` without blocking the loop: inline for tiny models, else await the batcher."""
        core = self.core
        start = time.perf_counter()
        try:
            prepared = core.prepare(request)
            if isinstance(prepared, pb.ModelInferResponse):
                response = prepared
            else:
                outputs = core.run_inline(prepared)
                if outputs is None:
                    outputs = await self._batched(prepared, timeout_s)
                response = core.complete(prepared, outputs)
        except RpcFailure as failure:
            core.note_failure(request.model_name, failure, time.perf_counter() - start)
            raise
        core.note_ok(response, time.perf_counter() - start)
        return response

    async def _batched(self, prepared: Prepared, timeout_s: float | None) -> Any:
        core = self.core
        future = core.submit(prepared)
        wait_s = core.wait_s(timeout_s)
        try:
            # a cancelled call (the client went away) cancels the batcher's future, so a queued request never runs
            return await asyncio.wait_for(asyncio.wrap_future(future), wait_s)
        except TimeoutError:
            future.cancel()
            raise core.timed_out(prepared.model, wait_s) from None
        except Exception as exc:
            raise core.run_failure(prepared.model, exc) from None


async def _or_abort(context: Any, step: Callable[[], T]) -> T:
    try:
        return step()
    except RpcFailure as failure:
        await context.abort(failure.code, failure.message)
        raise


class AioServerThread:
    """A grpc.aio server on an event loop in a thread of its own, started and stopped from sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: grpc.aio.Server | None = None
        self.health: Any = None
        self._thread = threading.Thread(target=self._run, name="hub-grpc-aio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(_awaited(make), self.loop).result(timeout)

    def start(
        self,
        servicer: AioInferenceServicer,
        *,
        interceptors: Sequence[Any],
        options: Sequence[tuple[str, Any]],
        bind: Callable[[grpc.aio.Server], int],
        health_names: Sequence[str],
    ) -> int:
        """Build, bind (`bind` returns the port, 0 when it failed) and start; returns the port."""

        async def build() -> int:
            server = grpc.aio.server(interceptors=list(interceptors), options=list(options))
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
            server.add_generic_rpc_handlers((UnsupportedMethods(asynchronous=True),))
            self.health = await _add_health(server, health_names)
            add_reflection(server, self.health is not None)
            port = bind(server)
            if port:
                await server.start()
                self.server = server
            return port

        return self.call(build)

    def stop(self, grace: float) -> None:
        """Stop accepting calls, let in-flight ones finish for up to `grace` seconds, end the loop."""
        server, self.server = self.server, None
        if server is not None:
            try:
                if self.health is not None:
                    self.call(self.health.enter_graceful_shutdown)  # Watch streams see NOT_SERVING first
                self.call(lambda: server.stop(grace), timeout=grace + 5.0)
            except Exception as exc:  # noqa: BLE001 - the loop must still end
                log.warning("grpc.aio server stop failed: %r", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


async def _add_health(server: grpc.aio.Server, names: Sequence[str]) -> Any:
    """grpc.health.v1 for the aio server (every name SERVING); None without grpcio-health-checking."""
    try:
        from grpc_health.v1 import _async as health_async
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        log.warning("grpcio-health-checking is not installed: grpc.health.v1 answers UNIMPLEMENTED")
        return None
    checker = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for name in ["", INFERENCE_SERVICE, *names]:
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    return checker
