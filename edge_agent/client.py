"""Clients of the local API: `AgentClient` (blocking) and `AsyncAgentClient` (asyncio).

Both use a DEALER socket and match replies by request id, so the async client can
keep many requests in flight on one socket. Error replies raise the agent's own
exception types (edge_agent.errors) with the agent's message.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import zmq
import zmq.asyncio

from tandem.edge_agent.config import default_endpoint
from tandem.edge_agent.errors import ERRORS_BY_CODE, AgentError, AgentUnavailable, ConfigError
from tandem.edge_agent.wire import MODES, SOURCE_NAMES, RequestTemplates, decode_reply
from tandem.edge_agent.zmq_io import recv_frames, send_frames
from tandem.protocols import local_api_pb2 as pb

Inputs = Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray


@dataclass
class AgentAnswer:
    """The agent's answer: where it came from, labels and confidences per row, outputs when asked."""

    source: str  # edge | cloud | edge-degraded
    labels: list[int]
    confidence: list[float]
    model_name: str
    model_version: str
    latency_ms: float  # inside the agent
    threshold: float
    detail: str = ""
    edge_confidence: list[float] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    request_id: str = ""

    @property
    def label(self) -> int:
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "outputs"}
        data["outputs"] = {k: v.tolist() for k, v in self.outputs.items()}
        return data


def _inputs(inputs: Inputs) -> Mapping[str, np.ndarray] | Sequence[np.ndarray]:
    return [inputs] if isinstance(inputs, np.ndarray) else inputs


def _mode(mode: str) -> pb.Mode:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(sorted(MODES))}")
    return MODES[mode]


def _request_frames(
    templates: RequestTemplates,
    inputs: Inputs,
    request_id: str,
    model_name: str,
    threshold: float | None,
    mode: str,
    return_outputs: bool,
    stream_id: str,
    traceparent: str,
) -> list[Any]:
    """A request's frames: the usual call (one array, every option at its default) through
    RequestTemplates.plain, in a quarter of the time; any other through RequestTemplates.frames."""
    if type(inputs) is np.ndarray and not (
        model_name or threshold is not None or mode != "auto" or return_outputs or stream_id or traceparent
    ):
        return templates.plain(inputs, request_id)
    return templates.frames(
        _inputs(inputs),
        request_id=request_id,
        model_name=model_name,
        threshold=threshold,
        mode=_mode(mode),
        return_outputs=return_outputs,
        stream_id=stream_id,
        traceparent=traceparent,
    )


def parse_reply(frames: Sequence[Any]) -> AgentAnswer:
    """Turn reply frames into an AgentAnswer, or raise the agent's error."""
    return _answer(*decode_reply(frames))


def _answer(header: pb.ReplyHeader, outputs: dict[str, np.ndarray]) -> AgentAnswer:
    if header.source == pb.SOURCE_ERROR:
        cls = ERRORS_BY_CODE.get(header.error.code, AgentError)
        raise cls(header.error.message or f"the agent returned error {header.error.code!r}")
    return AgentAnswer(
        source=SOURCE_NAMES.get(header.source, "unspecified"),
        labels=list(header.label),
        confidence=list(header.confidence),
        model_name=header.model_name,
        model_version=header.model_version,
        latency_ms=header.latency_ms,
        threshold=header.threshold,
        detail=header.detail,
        edge_confidence=list(header.edge_confidence),
        outputs={k: np.array(v) for k, v in outputs.items()} if outputs else {},
        request_id=header.request_id,
    )


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


def _new_ids() -> itertools.count:
    return itertools.count(1)


class AgentClient:
    """Blocking client; one request at a time per instance (use one per thread).

    The hot path is kept short because it is most of what the agent costs a caller
    beyond the transport: header templates (wire.RequestTemplates) and one blocking
    receive with RCVTIMEO instead of poll + receive.
    """

    def __init__(
        self, endpoint: str | None = None, *, timeout_s: float = 5.0, context: zmq.Context | None = None
    ) -> None:
        self.endpoint = endpoint or default_endpoint()
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self._ids = _new_ids()
        self._templates = RequestTemplates()
        self._rcvtimeo = -2  # what RCVTIMEO is set to now, in ms (-2: not yet set)
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        _connect(sock, self.endpoint)
        self._rcvtimeo = -2
        return sock

    def infer(
        self,
        inputs: Inputs,
        *,
        threshold: float | None = None,
        mode: str = "auto",
        return_outputs: bool = False,
        model_name: str = "",
        timeout_s: float | None = None,
        stream_id: str = "",
        traceparent: str = "",
    ) -> AgentAnswer:
        """Send one request (a dict by input name, a list by position, or one array) and wait for the answer.

        Raises BadRequestError etc. for error replies and AgentUnavailable on timeout. `stream_id`:
        a stateful model's stream; the agent keeps its state between requests (docs/tasks.md).
        `traceparent`: the application's W3C trace context; the agent's spans (and the hub's, on a
        fallback) join that trace.
        """
        request_id = self._prefix + str(next(self._ids))
        frames = _request_frames(
            self._templates, inputs, request_id, model_name, threshold, mode, return_outputs, stream_id, traceparent
        )
        sock = self._sock
        send_frames(sock, frames, block=True)
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        remaining = limit  # the first wait uses the whole limit: the same RCVTIMEO request after request
        while True:
            reply = None
            if remaining > 0:
                timeo = max(1, int(remaining * 1000))
                if timeo != self._rcvtimeo:
                    sock.setsockopt(zmq.RCVTIMEO, timeo)
                    self._rcvtimeo = timeo
                try:
                    # small replies: a copy into bytes is cheaper than a zmq.Frame; outputs: no copy here
                    reply = recv_frames(sock, block=True, copy=not return_outputs)
                except zmq.Again:
                    pass
            if reply is None:
                # a late reply would confuse the next request: start over on a fresh socket
                self._sock.close(0)
                self._sock = self._connect()
                raise AgentUnavailable(
                    f"no answer from the agent at {self.endpoint} within {limit:.1f} s; is it running?"
                )
            header, outputs = decode_reply(reply)
            if header.request_id in (request_id, ""):
                return _answer(header, outputs)
            remaining = deadline - time.monotonic()
            # a stale reply to an earlier, abandoned request: skip it

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(sock: zmq.Socket, endpoint: str) -> None:
    """Connect, or ConfigError naming an endpoint ZeroMQ cannot use (not a bare zmq.ZMQError)."""
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise ConfigError(
            f"endpoint {endpoint!r}: {exc.strerror}; an agent endpoint is ipc://PATH or tcp://HOST:PORT"
        ) from None


class AsyncAgentClient:
    """asyncio client; many concurrent `infer` calls share one socket."""

    def __init__(
        self, endpoint: str | None = None, *, timeout_s: float = 5.0, context: zmq.asyncio.Context | None = None
    ) -> None:
        self.endpoint = endpoint or default_endpoint()
        self.timeout_s = timeout_s
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        _connect(self._sock, self.endpoint)
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self._ids = _new_ids()
        self._templates = RequestTemplates()
        self._waiters: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def infer(
        self,
        inputs: Inputs,
        *,
        threshold: float | None = None,
        mode: str = "auto",
        return_outputs: bool = False,
        model_name: str = "",
        timeout_s: float | None = None,
        stream_id: str = "",
        traceparent: str = "",
    ) -> AgentAnswer:
        request_id = self._prefix + str(next(self._ids))
        frames = _request_frames(
            self._templates, inputs, request_id, model_name, threshold, mode, return_outputs, stream_id, traceparent
        )
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters[request_id] = waiter
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())
        limit = self.timeout_s if timeout_s is None else timeout_s
        # a timer on the waiter instead of asyncio.wait_for: one handle, no extra task per request
        timer = loop.call_later(limit, _expire, waiter)
        try:
            await self._sock.send_multipart(frames, copy=False)
            try:
                header, outputs = await waiter
            except asyncio.TimeoutError:
                raise AgentUnavailable(
                    f"no answer from the agent at {self.endpoint} within {limit:.1f} s; is it running?"
                ) from None
        finally:
            timer.cancel()
            self._waiters.pop(request_id, None)
        return _answer(header, outputs)

    async def _read(self) -> None:
        while self._waiters:
            frames = await self._sock.recv_multipart(copy=False)
            try:
                reply = decode_reply(frames)
            except AgentError:
                continue  # not a reply we can read; its request times out
            waiter = self._waiters.get(reply[0].request_id)
            if waiter is None and len(self._waiters) == 1 and not reply[0].request_id:
                waiter = next(iter(self._waiters.values()))  # an error reply the agent could not attribute
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        self._sock.close(0)
        if self._own_ctx:
            self._ctx.term()

    async def __aenter__(self) -> "AsyncAgentClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
