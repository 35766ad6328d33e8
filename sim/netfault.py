"""A loopback TCP proxy the simulator controls: latency, jitter, loss, bandwidth cap, stall, partition.

Devices reach the hub's gRPC port and the broker through one FaultProxy each, so a
scenario can degrade or cut the network without touching either. TCP cannot lose
bytes, so `loss` is the probability, per forwarded chunk, that the connection is
reset (what a device sees when packets stop for longer than its timeouts); a stall
keeps connections open and moves nothing, so callers wait out their deadlines. A
partition (hub outage) closes every open connection and refuses new ones until
healed. Runs an asyncio loop on its own thread; the setters are thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, TypedDict, Unpack

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class NetFaultError(RuntimeError):
    """The proxy could not start or was given impossible settings."""


@dataclass(frozen=True)
class Faults:
    latency_ms: float = 0.0  # one way, added to every chunk
    jitter_ms: float = 0.0  # uniform 0..jitter on top of latency (order is kept)
    loss: float = 0.0  # per-chunk probability the connection is reset
    bandwidth_bps: float | None = None  # bytes per second per direction; None: unlimited
    partitioned: bool = False
    stalled: bool = False  # connections stay open but nothing moves (a black hole): deadlines expire

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise NetFaultError(f"latency_ms and jitter_ms must be >= 0 (got {self.latency_ms}, {self.jitter_ms})")
        if not 0.0 <= self.loss <= 1.0:
            raise NetFaultError(f"loss must be between 0 and 1 (got {self.loss})")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise NetFaultError(f"bandwidth_bps must be > 0 or None (got {self.bandwidth_bps})")


class FaultChanges(TypedDict, total=False):
    """The Faults fields `FaultProxy.set` may change, typed as the fields are."""

    latency_ms: float
    jitter_ms: float
    loss: float
    bandwidth_bps: float | None
    partitioned: bool
    stalled: bool


def delivery_time(now: float, previous: float, nbytes: int, faults: Faults, rng: random.Random) -> float:
    """When a chunk read at `now` may be written: after latency + jitter, after the previous chunk
    (in-order), and no sooner than the bandwidth cap allows. Pure."""
    at = now + (faults.latency_ms + (rng.uniform(0.0, faults.jitter_ms) if faults.jitter_ms else 0.0)) / 1000.0
    at = max(at, previous)
    if faults.bandwidth_bps:
        at = max(at, previous + nbytes / faults.bandwidth_bps)
    return at


class FaultProxy:
    """`FaultProxy(host, port).start()`; connect to `proxy.port` instead of `port`."""

    def __init__(
        self, target_host: str, target_port: int, *, name: str = "proxy", seed: int = 0, listen_host: str = "127.0.0.1"
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.name = name
        self.port = 0
        self._faults = Faults()
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.refused = 0
        self.reset = 0
        self.bytes = 0

    @property
    def faults(self) -> Faults:
        return self._faults

    @property
    def url_hostport(self) -> str:
        return f"{self.listen_host}:{self.port}"

    # -- control (any thread) ---------------------------------------------------------

    def set(self, **changes: Unpack[FaultChanges]) -> Faults:
        """Change some settings (Faults fields); a new partition cuts open connections."""
        new = replace(self._faults, **changes)  # validates
        was = self._faults.partitioned
        self._faults = new
        if new.partitioned and not was:
            self._call(self._cut_all)
        log.info("netfault %s %s", self.name, new)
        return new

    def partition(self, on: bool = True) -> None:
        self.set(partitioned=on)

    def clear(self) -> None:
        self.set(latency_ms=0.0, jitter_ms=0.0, loss=0.0, bandwidth_bps=None, partitioned=False, stalled=False)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.listen_host, 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                error.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"netfault-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(5) or error:
            raise NetFaultError(f"netfault {self.name}: cannot listen ({error[0] if error else 'timeout'})")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            self._cut_all()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        except Exception:  # already stopping
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def _call(self, fn: Callable[[], object]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    def _cut_all(self) -> None:
        for w in list(self._conns):
            _abort(w)
        self._conns.clear()

    # -- data path (loop thread) ------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._faults.partitioned:
            self.refused += 1
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.refused += 1
            _abort(writer)
            return
        self.accepted += 1
        self._conns.update((writer, up_writer))
        pair = (writer, up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, pair), self._pipe(up_reader, writer, pair), return_exceptions=True
        )
        for w in pair:
            self._conns.discard(w)
            _abort(w)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        previous = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                f = self._faults
                if f.partitioned or (f.loss and self._rng.random() < f.loss):
                    self.reset += 1
                    break
                while self._faults.stalled and not self._faults.partitioned:
                    await asyncio.sleep(0.02)  # hold the bytes; they move again when the stall clears
                if self._faults.partitioned:
                    self.reset += 1
                    break
                at = delivery_time(time.monotonic(), previous, len(data), f, self._rng)
                previous = at
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                self.bytes += len(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            for w in pair:  # one side gone: the whole connection goes, as a reset would take it
                _abort(w)


def _abort(writer: asyncio.StreamWriter) -> None:
    try:
        transport = writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()
    except Exception:  # already closed
        pass
