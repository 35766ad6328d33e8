"""Per-call checks on a mutual-TLS hub: revoked certificates, devices asking as others, device rates.

The handshake already refused clients without a CA-signed certificate; gRPC Python has
no CRL option, so revocation is checked here against the CRL file (re-read when it
changes). `CertPolicy` decides; `ClientCertGate` (threaded server) and
`AioClientCertGate` (grpc.aio server) only turn its refusals into aborted calls.
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Callable

import grpc
import grpc.aio

from tandem.cloud_hub.inference.servicer import RpcFailure
from tandem.cloud_hub.pki import HUB_IDENTITY, RevocationList
from tandem.cloud_hub.ratelimit import RateLimiter
from tandem.protocols import inference_params as params


class CertPolicy:
    """Refuse revoked or missing certificates (UNAUTHENTICATED), a device asking as another device
    (PERMISSION_DENIED), and a device over its rate (RESOURCE_EXHAUSTED): each an RpcFailure."""

    def __init__(self, crl: RevocationList | None, limiter: RateLimiter) -> None:
        self.crl = crl
        self.limiter = limiter

    def identity(self, auth: Any) -> str:
        """The caller's certificate CN from `context.auth_context()`."""
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        if not pem or (self.crl is not None and self.crl.is_revoked(pem)):
            raise RpcFailure(grpc.StatusCode.UNAUTHENTICATED, "client certificate revoked or missing")
        return str((auth.get("x509_common_name") or [b""])[0].decode("utf-8", "replace"))

    def check(self, request: Any, cn: str) -> Any:
        """`request` when `cn` may send it now."""
        if cn != HUB_IDENTITY:
            claimed = request.parameters.get(params.DEVICE_ID) if hasattr(request, "parameters") else None
            if claimed is not None and params.parameter_value(claimed) not in (None, cn):
                raise RpcFailure(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"certificate of {cn!r} may not ask as {params.parameter_value(claimed)!r}",
                )
            if not self.limiter.allow(cn):
                raise RpcFailure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"device {cn!r} is over {self.limiter.rate:g} requests/s"
                )
        return request


class ClientCertGate(grpc.ServerInterceptor):
    """CertPolicy on every call of the threaded server (each streamed request checked too)."""

    def __init__(self, policy: CertPolicy) -> None:
        self.policy = policy

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return handler
        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def gated(request: Any, context: grpc.ServicerContext) -> Any:
                self._check(request, context, self._identity(context))
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(gated, **kw)
        if handler.unary_stream is not None:  # health Watch
            inner_us = handler.unary_stream

            def gated_us(request: Any, context: grpc.ServicerContext) -> Any:
                self._identity(context)
                return inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(gated_us, **kw)
        if handler.stream_stream is not None:  # ModelStreamInfer, reflection: each request is checked
            inner_ss = handler.stream_stream

            def gated_ss(requests: Any, context: grpc.ServicerContext) -> Any:
                cn = self._identity(context)
                return inner_ss((self._check(r, context, cn) for r in requests), context)

            return grpc.stream_stream_rpc_method_handler(gated_ss, **kw)
        return handler

    def _identity(self, context: grpc.ServicerContext) -> str:
        try:
            return self.policy.identity(context.auth_context())
        except RpcFailure as failure:
            context.abort(failure.code, failure.message)
            raise  # abort raised already; for the type checker

    def _check(self, request: Any, context: grpc.ServicerContext, cn: str) -> Any:
        try:
            return self.policy.check(request, cn)
        except RpcFailure as failure:
            context.abort(failure.code, failure.message)
            raise


class AioClientCertGate(grpc.aio.ServerInterceptor):
    """CertPolicy on every call of the grpc.aio server (each streamed request checked too)."""

    def __init__(self, policy: CertPolicy) -> None:
        self.policy = policy

    async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        policy = self.policy
        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def gated(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    policy.check(request, policy.identity(context.auth_context()))
                except RpcFailure as failure:
                    await context.abort(failure.code, failure.message)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(gated, **kw)
        if handler.unary_stream is not None:  # health Watch: a coroutine that writes to the context
            inner_us = handler.unary_stream

            async def identify(context: grpc.aio.ServicerContext) -> None:
                try:
                    policy.identity(context.auth_context())
                except RpcFailure as failure:
                    await context.abort(failure.code, failure.message)

            if inspect.isasyncgenfunction(inner_us):

                async def gated_gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    await identify(context)
                    async for response in inner_us(request, context):
                        yield response

                return grpc.unary_stream_rpc_method_handler(gated_gen, **kw)

            async def gated_us(request: Any, context: grpc.aio.ServicerContext) -> None:
                await identify(context)
                await inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(gated_us, **kw)
        if handler.stream_stream is not None:  # ModelStreamInfer, reflection: each request is checked
            inner_ss = handler.stream_stream

            async def gated_ss(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    cn = policy.identity(context.auth_context())
                except RpcFailure as failure:
                    await context.abort(failure.code, failure.message)

                async def checked() -> AsyncIterator[Any]:
                    async for request in requests:
                        try:
                            yield policy.check(request, cn)
                        except RpcFailure as failure:
                            await context.abort(failure.code, failure.message)

                async for response in inner_ss(checked(), context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(gated_ss, **kw)
        return handler
