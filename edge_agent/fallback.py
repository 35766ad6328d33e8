"""The agent's way to the hub: one v2 ModelInfer call, bounded by a deadline and a breaker.

Any KServe v2 gRPC server works (the Tandem hub, Triton, KServe); Tandem's extras go in
`parameters`. Every failure (hub down, deadline passed, overload, breaker open, a
malformed answer) surfaces as FallbackUnavailable so the agent answers degraded
instead of waiting; an open breaker fails before touching the network.
`FallbackClient` is for threads, `AsyncFallbackClient` (grpc.aio) for asyncio shells.
"""

from __future__ import annotations

import dataclasses

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Protocol

import grpc
import numpy as np

from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.errors import ConfigError, FallbackUnavailable
from tandem.protocols import inference_params as params
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.limits import MAX_GRPC_MESSAGE_BYTES
from tandem.protocols.tls import TlsConfigError, TlsFiles, grpc_channel_credentials, warn_plain_text
from tandem.protocols.tensor_codec import TensorCodecError, decode_response_outputs, encode_request_inputs
from tandem.protocols.tracing import TRACEPARENT, SpanContext, new_trace, parse_traceparent

log = logging.getLogger(__name__)

# Only UNAVAILABLE is retried: the hub was unreachable (no answer computed), and a
# ModelInfer has no side effects worth guarding. Overload is not retried: it would
# add load to a hub that is shedding it.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
# The hub answered, so it is alive: these do not count against the breaker. INTERNAL included: KServe's
# ModelServer (and other v2 servers) answer INTERNAL to a request they cannot decode, which says nothing
# about whether the server is up; a dead or hung server shows as UNAVAILABLE or DEADLINE_EXCEEDED.
# NOT_FOUND is not among them: a hub that serves no such model cannot answer any fallback, which is a
# configuration error (the agent's hub_model, or the hub's aliases), logged once and kept in `config_error`.
_HUB_ALIVE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
_REASONS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
}
# No second attempt when less than this is left of the deadline.
_MIN_RETRY_BUDGET_S = 0.01


class Fallback(Protocol):
    """What the agent asks the hub through: FallbackClient, or a test's stand-in with the same `infer`."""

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        device_id: str,
        model_version: str,
        edge_label: int | None = None,
        edge_confidence: float | None = None,
        deadline_ms: float | None = None,
        request_id: str = "",
        traceparent: str | None = None,
    ) -> FallbackResult: ...


@dataclass(frozen=True)
class FallbackResult:
    """The hub's answer: outputs by name, the round-trip latency, and where it came from."""

    outputs: dict[str, np.ndarray]
    latency_ms: float
    model_name: str = ""
    model_version: str = ""
    variant: str | None = None
    hub_compute_ms: float | None = None
    attempts: int = 1
    trace: SpanContext | None = None  # the fallback call's span; the hub's span is its child


def unavailable(reason: str, message: str) -> FallbackUnavailable:
    """A FallbackUnavailable with a machine-readable `reason` (breaker_open, deadline, unavailable, ...)."""
    exc = FallbackUnavailable(message)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def parse_target(url: str) -> tuple[str, bool]:
    """(gRPC target, use TLS) from "host:port", "grpc://host:port" or "grpcs://host:port".

    gRPC's own target forms (dns:///host:port, unix:/path, ipv4:...) pass through.
    """
    url = url.strip()
    if url.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        return url, False
    target, tls = url, False
    for prefix, is_tls in (("grpcs://", True), ("grpc://", False)):
        if url.startswith(prefix):
            target, tls = url[len(prefix) :].rstrip("/"), is_tls
            break
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or "/" in target:
        raise ValueError(f"hub url {url!r}: expected host:port, grpc://host:port or grpcs://host:port")
    return target, tls


def build_request(
    model_name: str, inputs: Mapping[str, np.ndarray], edge: params.EdgeContext, request_id: str = ""
) -> pb.ModelInferRequest:
    """The ModelInferRequest for a fallback: raw tensors plus the edge's context in parameters."""
    request = pb.ModelInferRequest(model_name=model_name, id=request_id)
    encode_request_inputs(request, inputs)
    params.set_edge_context(request, edge)
    return request


def parse_response(response: pb.ModelInferResponse, latency_ms: float, attempts: int) -> FallbackResult:
    """A FallbackResult from the hub's answer (raw or typed outputs)."""
    outputs = decode_response_outputs(response)
    extras = {k: params.parameter_value(v) for k, v in response.parameters.items()}
    variant = extras.get(params.VARIANT)
    compute = extras.get(params.COMPUTE_MS)
    return FallbackResult(
        outputs=outputs,
        latency_ms=latency_ms,
        model_name=response.model_name,
        model_version=response.model_version,
        variant=variant if isinstance(variant, str) else None,
        hub_compute_ms=float(compute) if isinstance(compute, (int, float)) and not isinstance(compute, bool) else None,
        attempts=attempts,
    )


def _span_for(traceparent: str | None) -> SpanContext:
    parent = parse_traceparent(traceparent)
    return parent.child() if parent is not None else new_trace()


def _traced(error: FallbackUnavailable, span: SpanContext) -> FallbackUnavailable:
    """The failed call's span rides on the error, so the agent can record it (edge_agent/tracing.py)."""
    error.trace = span  # type: ignore[attr-defined]
    return error


def channel_options() -> list[tuple[str, object]]:
    """gRPC channel options for a fallback channel (shared by the sync and asyncio clients)."""
    # Reconnect quickly once the hub is back, so a half-open probe finds a live
    # connection instead of a channel still sitting in its (default 120 s) backoff.
    # gRPC also uses min_reconnect_backoff as the minimum time a connection attempt
    # may take (TCP + TLS + SETTINGS): keep it well above a slow WAN handshake.
    return [
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 1000),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # With a dns:///name target resolving to several hub replicas, spread calls.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]


class _FallbackCore:
    """Everything but the transport: settings, request building, retry and breaker bookkeeping."""

    def __init__(
        self,
        url: str,
        deadline_ms: float,
        breaker: CircuitBreaker | None,
        max_attempts: int,
        tls: TlsFiles | None = None,
    ) -> None:
        if deadline_ms <= 0:
            raise ConfigError(f"fallback.deadline_ms: must be positive, got {deadline_ms}")
        if max_attempts < 1:
            raise ConfigError(f"fallback max_attempts: must be >= 1, got {max_attempts}")
        self.url = url
        self.deadline_ms = deadline_ms
        self.breaker = breaker
        self.max_attempts = max_attempts
        try:
            self._target, self._tls = parse_target(url)
        except ValueError as exc:
            raise ConfigError(f"fallback.hub_url: {exc}") from exc
        self.tls = tls
        self.config_error: str | None = None  # set on the hub's NOT_FOUND: /healthz and `check` show it

    def _credentials(self) -> grpc.ChannelCredentials | None:
        """Mutual TLS with `tls`; grpcs:// alone: TLS against the system roots; else None (plain text)."""
        if self.tls is not None:
            try:
                return grpc_channel_credentials(self.tls)
            except (TlsConfigError, OSError) as exc:
                raise ConfigError(f"fallback tls: {exc}") from exc
        if self._tls:
            return grpc.ssl_channel_credentials()
        warn_plain_text("fallback client", self.url)
        return None

    def _prepare(
        self, model_name: str, inputs: Mapping[str, np.ndarray], edge: params.EdgeContext, request_id: str
    ) -> pb.ModelInferRequest:
        try:
            request = build_request(model_name, inputs, edge, request_id)
        except TensorCodecError as exc:
            raise unavailable("bad_request", f"cannot send this input to the hub: {exc}") from exc
        # After encoding, so an input the protocol cannot carry never takes a half-open probe slot.
        if self.breaker is not None and not self.breaker.allow():
            raise unavailable("breaker_open", f"hub at {self.url} is failing; circuit breaker open, not calling it")
        return request

    def _retry(self, code: grpc.StatusCode, attempts: int, left_s: float) -> bool:
        if code in _RETRYABLE and attempts < self.max_attempts and left_s > _MIN_RETRY_BUDGET_S:
            log.debug("hub %s unavailable (attempt %d), retrying within %.0f ms", self.url, attempts, left_s * 1000)
            return True
        return False

    def _answer(self, response: pb.ModelInferResponse, latency_ms: float, attempts: int) -> FallbackResult:
        try:
            result = parse_response(response, latency_ms, attempts)
        except TensorCodecError as exc:
            if self.breaker is not None:
                self.breaker.record_failure()
            raise unavailable("bad_answer", f"hub at {self.url} sent a malformed answer: {exc}") from exc
        if self.breaker is not None:
            self.breaker.record_success()
        return result

    def _closed(self, exc: Exception) -> FallbackUnavailable:
        # No call reached the hub: give a half-open probe slot back rather than wedge it.
        if self.breaker is not None and self.breaker.state == "half-open":
            self.breaker.record_failure()
        return unavailable("closed", f"the fallback client for {self.url} is closed")

    def _failure(
        self, exc: grpc.RpcError, model_name: str, budget_s: float, spent_s: float = 0.0
    ) -> FallbackUnavailable:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        if code == grpc.StatusCode.UNAVAILABLE and budget_s - spent_s <= _MIN_RETRY_BUDGET_S:
            # retried UNAVAILABLE until the budget ran out (a host that accepts TCP but never speaks
            # HTTP/2): what the caller met is the deadline, as a single hung call would report it
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.NOT_FOUND:
            message = (
                f"hub at {self.url} serves no model {model_name!r} (NOT_FOUND: {details}): a configuration "
                f"error; set "
                f"[fallback] hub_model to a model the hub serves, or start the hub with --alias "
                f"{model_name}=<its model>"
            )
            if self.config_error != message:
                log.error("fallback %s", message)
                self.config_error = message
            if self.breaker is not None:
                self.breaker.record_failure()  # not 'alive' for us: every fallback would fail the same way
            return unavailable("model_not_found", message)
        if code in _HUB_ALIVE:
            if self.breaker is not None:
                self.breaker.record_success()  # it answered: alive, even if it refused this request
            return unavailable(
                "rejected", f"hub at {self.url} rejected the request for {model_name!r}: {code.name}: {details}"
            )
        if self.breaker is not None:
            self.breaker.record_failure()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"hub at {self.url} did not answer within {budget_s * 1000:.0f} ms"
        else:
            message = f"hub at {self.url} failed: {code.name}: {details}"
        return unavailable(_REASONS.get(code, "error"), message)


class FallbackClient(_FallbackCore):
    """Ask a v2 gRPC server for an answer within `deadline_ms`, over one long-lived channel.

    Thread-safe: the agent calls `infer` from several worker threads at once.
    """

    def __init__(
        self,
        url: str,
        *,
        deadline_ms: float = 200,
        breaker: CircuitBreaker | None = None,
        max_attempts: int = 2,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(url, deadline_ms, breaker, max_attempts, tls)
        credentials = self._credentials()
        if credentials is not None:
            self._channel = grpc.secure_channel(self._target, credentials, options=channel_options())
        else:
            self._channel = grpc.insecure_channel(self._target, options=channel_options())
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        device_id: str,
        model_version: str,
        edge_label: int | None = None,
        edge_confidence: float | None = None,
        deadline_ms: float | None = None,
        request_id: str = "",
        traceparent: str | None = None,
    ) -> FallbackResult:
        """The hub's answer for `inputs`, or FallbackUnavailable within the deadline (plus gRPC's own slack).

        The call is a span of the trace in `traceparent` (a new trace without one), sent to the hub as W3C
        `traceparent` metadata."""
        start = time.perf_counter()
        budget_s = (deadline_ms if deadline_ms is not None else self.deadline_ms) / 1000.0
        edge = params.EdgeContext(
            device_id=device_id, model_version=model_version, edge_label=edge_label, edge_confidence=edge_confidence
        )
        request = self._prepare(model_name, inputs, edge, request_id)
        span = _span_for(traceparent)
        metadata = ((TRACEPARENT, span.traceparent),)
        attempts = 0
        while True:
            attempts += 1
            remaining = budget_s - (time.perf_counter() - start)
            try:
                response = self._stub.ModelInfer(request, timeout=max(remaining, 0.001), metadata=metadata)
                break
            except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
                raise self._closed(exc) from exc
            except grpc.RpcError as exc:
                if self._retry(exc.code(), attempts, budget_s - (time.perf_counter() - start)):
                    continue
                raise _traced(self._failure(exc, model_name, budget_s, time.perf_counter() - start), span) from None
        return dataclasses.replace(self._answer(response, (time.perf_counter() - start) * 1000.0, attempts), trace=span)

    def ready(self, timeout_s: float = 1.0) -> bool:
        """Is the hub up and ready? (ServerReady; False on any error.)"""
        try:
            return self._stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s).ready
        except (grpc.RpcError, ValueError):
            return False

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "FallbackClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFallbackClient(_FallbackCore):
    """The asyncio (grpc.aio) twin of FallbackClient, for asyncio shells: no thread hop per call.

    Create, use and close it on one running event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        deadline_ms: float = 200,
        breaker: CircuitBreaker | None = None,
        max_attempts: int = 2,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(url, deadline_ms, breaker, max_attempts, tls)
        credentials = self._credentials()
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(self._target, credentials, options=channel_options())
        else:
            self._channel = grpc.aio.insecure_channel(self._target, options=channel_options())
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._is_closed = False

    async def infer(
        self,
        model_name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        device_id: str,
        model_version: str,
        edge_label: int | None = None,
        edge_confidence: float | None = None,
        deadline_ms: float | None = None,
        request_id: str = "",
        traceparent: str | None = None,
    ) -> FallbackResult:
        """Same contract as FallbackClient.infer."""
        start = time.perf_counter()
        budget_s = (deadline_ms if deadline_ms is not None else self.deadline_ms) / 1000.0
        edge = params.EdgeContext(
            device_id=device_id, model_version=model_version, edge_label=edge_label, edge_confidence=edge_confidence
        )
        request = self._prepare(model_name, inputs, edge, request_id)
        if self._is_closed:
            raise self._closed(RuntimeError("closed"))
        span = _span_for(traceparent)
        metadata = ((TRACEPARENT, span.traceparent),)
        attempts = 0
        while True:
            attempts += 1
            remaining = budget_s - (time.perf_counter() - start)
            try:
                response = await self._stub.ModelInfer(request, timeout=max(remaining, 0.001), metadata=metadata)
                break
            except grpc.aio.AioRpcError as exc:
                if self._retry(exc.code(), attempts, budget_s - (time.perf_counter() - start)):
                    continue
                raise _traced(self._failure(exc, model_name, budget_s, time.perf_counter() - start), span) from None
        return dataclasses.replace(self._answer(response, (time.perf_counter() - start) * 1000.0, attempts), trace=span)

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            return (await self._stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s)).ready
        except grpc.aio.AioRpcError:
            return False

    async def close(self) -> None:
        self._is_closed = True
        await self._channel.close()

    async def __aenter__(self) -> "AsyncFallbackClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
