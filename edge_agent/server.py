"""The local API's I/O shell: a ZeroMQ ROUTER socket served by an asyncio loop on its own thread.

A request that has to wait (on the runtime's worker thread or on the hub) becomes a
task, so it never holds up the next one; one the handler answers at once is sent at
once. Frames are received without copying (zmq.Frame) and handed to the handler as
they are; the handler returns the reply frames. Clients may be DEALER sockets
(frames: header, tensors...) or REQ sockets (an empty delimiter first).

Measured on the 2-core dev VM: zmq.asyncio costs about 50-70 us per request over a
blocking zmq loop (echo p50 0.10-0.125 ms vs 0.05 ms); the price of one loop serving
many clients, timers and the hub calls without a thread per client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import zmq
import zmq.asyncio

from edge_agent.errors import AgentError, ConfigError, OverloadedError
from edge_agent.wire import error_reply
from protocols import limits

log = logging.getLogger(__name__)

# Returns the reply frames, or an awaitable of them when the answer has to wait.
Handler = Callable[[Sequence[Any]], "list[Any] | Awaitable[list[Any]]"]
IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the NUL


class ZmqServer:
    """Bind `endpoint`, call `handler(frames)` per request, send back what it returns."""

    def __init__(self, endpoint: str, handler: Handler, *, max_inflight: int = 1024) -> None:
        self.requested_endpoint = endpoint
        self.endpoint = endpoint
        self._handler = handler
        self._max_inflight = max_inflight
        self.inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._main: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "server not started"
        return self._loop

    def start(self, timeout: float = 10.0) -> "ZmqServer":
        """Bind and serve on a background thread; raises here when the bind fails."""
        _prepare_ipc(self.requested_endpoint)
        self._thread = threading.Thread(target=self._run, name="agent-zmq", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AgentError(f"the local API did not start within {timeout} s")
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._main is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._main.cancel)
            self._thread.join(timeout)
        if self.requested_endpoint.startswith("ipc://"):
            Path(self.requested_endpoint[len("ipc://"):]).unlink(missing_ok=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to start() if we never got ready
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()
            else:
                log.exception("local API loop crashed")
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._main = asyncio.current_task()
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.ZMQ_MAX_MSG_BYTES)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.setsockopt(zmq.SNDHWM, 10000)
        try:
            try:
                sock.bind(self.requested_endpoint)
            except zmq.ZMQError as exc:
                raise ConfigError(f"server.endpoint: cannot bind {self.requested_endpoint} ({exc}); "
                                  "is another agent running there?") from exc
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or self.requested_endpoint
            log.info("local API listening endpoint=%s", self.endpoint)
            self._ready.set()
            try:
                while True:
                    self._dispatch(sock, await sock.recv_multipart(copy=False))
            except asyncio.CancelledError:
                pass
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=2)
        finally:
            sock.close(0)
            ctx.term()

    def _dispatch(self, sock: zmq.asyncio.Socket, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return  # not from a DEALER/REQ peer; nothing to route a reply to
        split = 2 if len(frames) > 2 and len(frames[1].buffer) == 0 else 1  # REQ adds an empty delimiter
        envelope = [f.bytes for f in frames[:split]]
        body = frames[split:]
        if self.inflight >= self._max_inflight:
            exc = OverloadedError(f"the agent has {self.inflight} requests in flight (limit {self._max_inflight})")
            sock.send_multipart(envelope + error_reply("", exc.code, str(exc)), copy=False)
            return
        try:
            result = self._handler(body)
        except Exception as exc:  # the handler should not raise; never let one request kill the loop
            log.exception("request handler failed")
            result = error_reply("", "internal", f"internal error: {type(exc).__name__}: {exc}")
        if isinstance(result, list):  # answered synchronously: no task, no extra loop turn
            sock.send_multipart(envelope + result, copy=False)
            return
        task = asyncio.ensure_future(self._answer(sock, envelope, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, sock: zmq.asyncio.Socket, envelope: list[bytes], pending: Awaitable[list[Any]]) -> None:
        self.inflight += 1
        try:
            try:
                reply = await pending
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the handler should not raise; never let one request kill the loop
                log.exception("request handler failed")
                reply = error_reply("", "internal", f"internal error: {type(exc).__name__}: {exc}")
            await sock.send_multipart(envelope + reply, copy=False)
        finally:
            self.inflight -= 1


def _prepare_ipc(endpoint: str) -> None:
    """ipc:// needs its folder to exist and a path short enough for a Unix socket."""
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://"):]
    if len(path.encode()) > IPC_PATH_MAX:
        raise ConfigError(f"server.endpoint: ipc path {path!r} is longer than {IPC_PATH_MAX} bytes; use a shorter one")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
