"""The local API's I/O shell: a ZeroMQ ROUTER socket served by an asyncio loop on its own thread.

A request that has to wait (on the runtime's worker thread or on the hub) becomes a
task, so it never holds up the next one; one the handler answers at once is sent at
once. Tensor frames are received without copying (zmq.Frame), a DEALER's header as bytes
(zmq_io.recv_frames' small_first: half a Frame's cost), and handed to the handler as they are;
the handler returns the reply frames. Clients may be DEALER sockets (frames: header,
tensors...) or REQ sockets (an empty delimiter first, then a zmq.Frame header).

The socket is a plain (blocking-API) zmq socket whose FD is registered with the loop
(`add_reader`), drained with non-blocking receives: zmq.asyncio wraps every receive
in a Future and a poller turn, close to twice this loop's echo round trip (docs/figures.md).

After a reply the thread may poll for the next request before it goes back to sleep in
epoll. A thread that sleeps pays the CPU's wake-up on the next request: on a host with
cpuidle haltpoll that is most of the round trip (the spin halves the digits agent's p50;
figures with date and host in docs/figures.md). The spin releases the GIL while it polls,
never runs while a request waits on the worker or the hub, lasts at most `spin_us` (0 turns
it off: battery devices), and only while it pays (`edge_agent/spin.py`): requests keep
coming soon after replies, it lasts a few of their usual gaps, and the host has a CPU to
spare (on an oversubscribed host a spin only takes the CPU from the client).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence, cast

import zmq

from tandem.edge_agent.errors import AgentError, ConfigError, OverloadedError, reply_code
from tandem.edge_agent.spin import HOST_SAMPLE_S, MIN_HIT_RATE, PREEMPTED_AFTER_S, SpinGovernor, runnable_tasks
from tandem.edge_agent.wire import error_reply
from tandem.edge_agent.zmq_io import POLLIN, readable, recv_frames, send_frames
from tandem.protocols import limits

log = logging.getLogger(__name__)
# What to do when the local API's address is taken (two agents on one host).
TAKEN_FIX = (
    "give each agent on this host its own endpoint: --endpoint ipc://PATH or tcp://127.0.0.1:PORT "
    "(or [server] endpoint, env TANDEM_AGENT_SERVER_ENDPOINT)"
)

# Returns the reply frames, or an awaitable of them when the answer has to wait.
Handler = Callable[[Sequence[Any]], "list[Any] | Awaitable[list[Any]]"]
IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the NUL
DRAIN_BATCH = 64  # requests handled per loop callback before other callbacks get a turn
OVERLAP_CHECK_AFTER_S = 50e-6  # synchronous answers slower than this look for requests queued meanwhile
SPIN_MIN_HIT_RATE = MIN_HIT_RATE  # below it the loop sleeps at once: most requests came after the spin would end


class Concurrency:
    """Whether requests have lately overlapped at the local API, as the server sees them.

    A request overlaps when it arrives while another waits on the worker or the hub, or
    while a long synchronous one ran (it was queued before that one's answer left). The
    service runs models too big for `inline_max_us` on the I/O loop only while clients
    come alone (`alone`): then the two thread hand-offs are pure cost, while with company
    the worker is what batches.
    """

    def __init__(self, memory: int = 64) -> None:
        self.memory = memory  # lone requests it takes to forget an overlap
        self.recent = 0

    @property
    def alone(self) -> bool:
        return self.recent == 0

    def seen(self, overlapped: bool) -> None:
        if overlapped:
            self.recent = self.memory
        elif self.recent:
            self.recent -= 1


class ZmqServer:
    """Bind `endpoint`, call `handler(frames)` per request, send back what it returns."""

    def __init__(
        self,
        endpoint: str,
        handler: Handler,
        *,
        max_inflight: int = 1024,
        spin_us: float = 0.0,
        concurrency: Concurrency | None = None,
    ) -> None:
        self.requested_endpoint = endpoint
        self._spin_s = spin_us / 1e6
        self.spin = SpinGovernor(spin_us)  # how long each post-reply spin may last (edge_agent/spin.py)
        self._replied_at = 0.0  # when the last synchronous reply left (0: no gap being timed)
        self._host_sampled_at = 0.0  # when the host's run queue was last read for the spin
        self.concurrency = concurrency if concurrency is not None else Concurrency()
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
        self._sock: zmq.Socket | None = None
        self._drain_scheduled = False

    @property
    def spin_hit_rate(self) -> float:
        """Share of recent replies whose next request came within spin_us (an EWMA)."""
        return self.spin.hit_rate

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
            Path(self.requested_endpoint[len("ipc://") :]).unlink(missing_ok=True)

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
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.ZMQ_MAX_MSG_BYTES)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.setsockopt(zmq.SNDHWM, 10000)
        loop = asyncio.get_running_loop()
        fd = cast(int, sock.getsockopt(zmq.FD))  # pyzmq types every option int | bytes; FD and EVENTS are ints
        reading = False
        try:
            try:
                sock.bind(self.requested_endpoint)
            except zmq.ZMQError as exc:
                raise ConfigError(
                    f"server.endpoint: cannot bind {self.requested_endpoint} ({exc}); {TAKEN_FIX}"
                ) from exc
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or self.requested_endpoint
            self._sock = sock
            loop.add_reader(fd, self._drain)
            reading = True
            log.info("local API listening endpoint=%s", self.endpoint)
            self._ready.set()
            self._drain()  # the FD is edge-triggered: anything already queued raised no edge for us
            try:
                await loop.create_future()  # until stop() cancels this task
            except asyncio.CancelledError:
                pass
            loop.remove_reader(fd)
            reading = False
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=2)
        finally:
            if reading:
                loop.remove_reader(fd)
            self._sock = None
            sock.close(0)
            ctx.term()

    def _drain(self) -> None:
        """Handle what the socket holds (up to DRAIN_BATCH), then leave the loop to others.

        zmq's FD only signals a change of state, and any send or receive may consume that
        signal, so every pass ends by asking the socket itself (EVENTS) whether more waits.
        """
        self._drain_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(DRAIN_BATCH):
            if not readable(sock) and not self._await_next(sock):
                return
            try:
                frames = recv_frames(sock, small_first=2)  # routing id, header (or REQ's delimiter)
            except zmq.Again:
                return
            if self._replied_at:
                now = time.perf_counter()
                self.spin.request_came(now - self._replied_at)
                self._replied_at = 0.0
                if now - self._host_sampled_at > HOST_SAMPLE_S:  # on arrival: the client is not runnable then
                    self._host_sampled_at = now
                    self.spin.host_seen(runnable_tasks())
            self._dispatch(sock, frames)
        self._schedule_drain()

    def _await_next(self, sock: zmq.Socket) -> bool:
        """Poll for another request for the spin's budget; True when one waits (see the module docstring).

        zmq_poll with a zero timeout releases the GIL, so other threads run meanwhile. No
        spin while tasks are in flight: their answers come back through this loop. A jump
        between two polls means the thread lost its CPU (or waited for the GIL): the spin
        was taking it from someone, which the governor counts against spinning.
        """
        if not self._spin_s or self._tasks:
            return False
        budget = self.spin.budget_s()
        if not budget:
            return False
        spent, hit, preempted = spin_poll([(sock, POLLIN)], budget)
        self.spin.spun(spent, hit, preempted)
        return hit

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _send(self, sock: zmq.Socket, frames: list[Any]) -> None:
        try:
            send_frames(sock, frames)
        except zmq.Again:  # the peer's queue is full (or it left): ROUTER drops, as zmq.asyncio did
            log.warning("reply dropped: the client's queue is full or it is gone")

    def _dispatch(self, sock: zmq.Socket, frames: list[Any]) -> None:
        """`frames`: the routing id and the next part as bytes (recv_frames' small_first), then zmq.Frames."""
        if len(frames) < 2:
            return  # not from a DEALER/REQ peer; nothing to route a reply to
        split = 2 if len(frames) > 2 and len(frames[1]) == 0 else 1  # REQ adds an empty delimiter
        envelope = frames[:split]
        body = frames[split:]
        if self.inflight >= self._max_inflight:
            exc = OverloadedError(f"the agent has {self.inflight} requests in flight (limit {self._max_inflight})")
            self._send(sock, envelope + error_reply("", exc.code, str(exc)))
            return
        overlapped = self.inflight > 0  # another request waits on the worker or the hub
        started = time.perf_counter()
        try:
            result = self._handler(body)
        except Exception as exc:  # the handler should not raise; never let one request kill the loop
            log.exception("request handler failed")
            result = error_reply("", *reply_code(exc))
        if isinstance(result, list):  # answered synchronously: no task, no extra loop turn
            # a request that came in while this one ran (before its answer left, so not the same
            # client's next one); asked only after long runs, where it decides worker vs loop
            if not overlapped and time.perf_counter() - started > OVERLAP_CHECK_AFTER_S:
                overlapped = readable(sock)
            self.concurrency.seen(overlapped)
            self._send(sock, envelope + result)
            if self._spin_s:
                self._replied_at = time.perf_counter()
            return
        self.concurrency.seen(overlapped)
        task = asyncio.ensure_future(self._answer(envelope, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: _close_unstarted(done, result))

    async def _answer(self, envelope: list[bytes], pending: Awaitable[list[Any]]) -> None:
        self.inflight += 1
        try:
            try:
                reply = await pending
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the handler should not raise; never let one request kill the loop
                log.exception("request handler failed")
                reply = error_reply("", *reply_code(exc))
            sock = self._sock
            if sock is not None:
                self._send(sock, envelope + reply)
                self._schedule_drain()  # the send may have taken the FD's edge for a waiting request
        finally:
            self.inflight -= 1


def spin_poll(items: list[tuple[zmq.Socket, int]], budget_s: float) -> tuple[float, bool, bool]:
    """Poll `items` with zero timeouts for up to `budget_s`: (seconds spent, a request came, preempted).

    The post-reply spin itself, apart from the governor that sizes it (spin.py); bench/agent.py's
    spinning echo runs this same loop. Preempted: a jump of over PREEMPTED_AFTER_S between two polls.
    """
    start = last = time.perf_counter()
    deadline = start + budget_s
    hit = preempted = False
    while True:
        if zmq.zmq_poll(items, 0):
            hit = True
            break
        now = time.perf_counter()
        if now - last > PREEMPTED_AFTER_S:
            preempted = True
        last = now
        if now >= deadline:
            break
    return time.perf_counter() - start, hit, preempted


def _close_unstarted(task: asyncio.Task, pending: Awaitable[Any]) -> None:
    """A task cancelled before it ran (the server stopping) never awaited its handler's coroutine: close it."""
    if task.cancelled() and asyncio.iscoroutine(pending):
        pending.close()  # no-op when it ran; otherwise no 'never awaited' warning at shutdown


def _prepare_ipc(endpoint: str) -> None:
    """ipc:// needs its folder to exist, a path short enough for a Unix socket, and nobody listening there:
    ZeroMQ would silently take a live socket over, so a second agent with the same (default) endpoint would
    steal the first one's clients instead of failing."""
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://") :]
    if len(path.encode()) > IPC_PATH_MAX:
        raise ConfigError(f"server.endpoint: ipc path {path!r} is longer than {IPC_PATH_MAX} bytes; use a shorter one")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if _listened_on(path):
        raise ConfigError(f"server.endpoint: {endpoint} is taken: another agent is listening there; {TAKEN_FIX}")


def _listened_on(path: str) -> bool:
    """Does a process accept connections on the Unix socket at `path`? (A stale file left by a crash: no.)"""
    if not Path(path).is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True
