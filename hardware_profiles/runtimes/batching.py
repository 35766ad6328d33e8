"""A dynamic micro-batcher in front of one runtime session.

Requests that arrive within a short window are concatenated along the batch axis,
run once and split back, so concurrent callers share one runtime call. Used by the
edge agent and by the hub's inference server; it knows nothing about sockets.

The window is adaptive: a lone caller (no request ever waiting behind another) pays
no window at all; the batcher lingers for `window_ms` only while it has recently
seen requests overlap, which is when lingering buys a bigger batch.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

# How many recent batches count as "recent" for the adaptive window.
_OVERLAP_MEMORY = 32
# Weight of the newest session.run time in `run_ewma_s`.
_RUN_EWMA_WEIGHT = 0.1


class BatcherError(RuntimeError):
    """Base class for micro-batcher errors."""


class QueueFullError(BatcherError):
    """The batcher's queue is full; the caller should shed load or retry later."""


class BatcherClosedError(BatcherError):
    """The batcher was closed before the request ran."""


@dataclass
class _Request:
    feeds: Mapping[str, np.ndarray]
    rows: int
    key: tuple[Any, ...]
    future: Future
    enqueued: float


@dataclass
class BatcherStats:
    """Counters for metrics; read them with `MicroBatcher.stats()`."""

    requests: int = 0
    batches: int = 0
    rows: int = 0
    rejected: int = 0
    failed: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    inline: int = 0  # of `requests`, those run in the caller's thread (try_run_inline)
    started: int = 0  # requests that reached the session, inline ones included (Triton's queue count)
    queue_ns: int = 0  # their summed wait from submit to the start of their batch (inline: none)


def batch_axis_supported(inputs: Sequence[Any], outputs: Sequence[Any]) -> bool:
    """True when every input and output has a dynamic (or absent-size) leading axis."""
    specs = list(inputs) + list(outputs)
    return bool(specs) and all(len(s.shape) >= 1 and s.shape[0] == -1 for s in specs)


class MicroBatcher:
    """Group requests into batches for `session.run`, on one worker thread.

    `session` is anything with `run(feeds) -> list[np.ndarray]` and `inputs`/`outputs`
    specs (hardware_profiles.runtimes.RuntimeSession). Only the worker thread calls
    `session.run`, so sessions need not be thread-safe.
    """

    def __init__(
        self,
        session: Any,
        *,
        max_batch: int = 8,
        window_ms: float = 0.3,
        max_queue: int = 256,
        batching: bool | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.session = session
        supported = batch_axis_supported(session.inputs, session.outputs)
        self.batching = supported if batching is None else (batching and supported)
        self.max_batch = max_batch if self.batching else 1
        self.window_s = window_ms / 1000.0
        self.max_queue = max_queue
        self._queue: deque[_Request] = deque()
        # a plain Lock under the Condition: the agent's inline path takes `_mutex` itself (a C-level
        # context manager; Condition's own __enter__/__exit__ are Python calls around an RLock)
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)  # never acquired while held (no nesting)
        self._run_lock = threading.Lock()  # one session.run at a time: worker or inline caller
        self._closed = False
        self._overlap_recent = 0  # batches left during which we keep lingering
        # while the worker lingers for a batch: the key it gathers and the rows it still has room for.
        # submit wakes it only when that room is filled (it wakes at its deadline otherwise): a wake per
        # arrival cost the worker a context switch and a GIL hand-off for each row it batched
        self._linger_key: tuple[Any, ...] | None = None
        self._linger_room = 0
        self._stats = BatcherStats()
        # session.run's own time per call, queueing and thread hand-offs excluded (an upper
        # bound for one row when batches ran): what callers compare with a hand-off's cost.
        self.run_ewma_s: float | None = None
        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()

    # -- producer side ---------------------------------------------------------

    def submit(self, feeds: Mapping[str, np.ndarray]) -> "Future[list[np.ndarray]]":
        """Queue one request (its leading axis is its row count); returns a Future of outputs.

        Raises QueueFullError when `max_queue` requests are already waiting, and
        BatcherClosedError after `close()`.
        """
        rows = _rows(feeds) if self.batching else 1
        key = _group_key(feeds) if self.batching else ()
        future: Future = Future()
        request = _Request(feeds, rows, key, future, time.perf_counter())
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the micro-batcher is closed")
            if len(self._queue) >= self.max_queue:
                self._stats.rejected += 1
                raise QueueFullError(f"micro-batcher queue is full ({self.max_queue} requests waiting)")
            if self._queue:
                self._overlap_recent = _OVERLAP_MEMORY
            self._queue.append(request)
            self._stats.requests += 1
            if self._linger_key is None:
                self._cond.notify()
            elif key == self._linger_key:
                self._linger_room -= rows
                if self._linger_room <= 0:
                    self._cond.notify()
        return future

    def try_run_inline(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
        """Run in the caller's thread if nothing is queued and the worker is idle; else None.

        For models faster than a thread hand-off (tens of microseconds) the hand-off is
        the main cost; callers use this only for such models. Runtime errors propagate.
        """
        if self._queue or self._closed or not self._run_lock.acquire(blocking=False):
            return None
        try:
            if self._queue:
                return None
            return self._run_counted(feeds)
        finally:
            self._run_lock.release()

    def run_in_caller(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run in the caller's thread now, whatever is queued: for models cheaper than a hand-off.

        Unlike `try_run_inline` this never falls back to the worker, so a tiny model under load does
        not flip into hand-offs (the hub's threaded server, 64 calls in flight: half its digits calls
        went through the worker, each a dozen context switches). A session that declares
        `concurrent_runs` (ONNX Runtime's) runs in every caller at once; others are taken in turn.
        Runtime errors propagate; BatcherClosedError after `close()`.
        """
        if self._closed:
            raise BatcherClosedError("the micro-batcher is closed")
        if getattr(self.session, "concurrent_runs", False):
            return self._run_counted(feeds)
        with self._run_lock:
            return self._run_counted(feeds)

    def _run_counted(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One request run in the caller's thread, counted as an inline batch of one."""
        with self._mutex:
            stats = self._stats
            stats.requests += 1
            stats.batches += 1
            stats.rows += _rows(feeds) if self.batching else 1
            stats.batch_sizes[1] = stats.batch_sizes.get(1, 0) + 1
            stats.inline += 1
            stats.started += 1
        try:
            return list(self._timed_run(feeds))
        except Exception:
            with self._cond:
                self._stats.failed += 1
            raise

    def run(self, feeds: Mapping[str, np.ndarray], timeout: float | None = None) -> list[np.ndarray]:
        """Submit and wait: the blocking convenience form of `submit`."""
        return self.submit(feeds).result(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def stats(self) -> BatcherStats:
        with self._cond:
            return dataclasses.replace(self._stats, batch_sizes=dict(self._stats.batch_sizes))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; requests still queued fail with BatcherClosedError."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for req in pending:
            if req.future.set_running_or_notify_cancel():
                req.future.set_exception(BatcherClosedError("the micro-batcher closed before this request ran"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> "MicroBatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side -------------------------------------------------------------

    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._queue.popleft()
            batch = [first]
            rows = first.rows
            if self.max_batch > 1 and rows < self.max_batch:
                linger = self.window_s if (self._overlap_recent > 0 or self._queue) else 0.0
                deadline = time.perf_counter() + linger
                while rows < self.max_batch:
                    taken = self._take_compatible(first.key, self.max_batch - rows)
                    for req in taken:
                        batch.append(req)
                        rows += req.rows
                    if rows >= self.max_batch:
                        break
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or self._closed:
                        break
                    self._linger_key, self._linger_room = first.key, self.max_batch - rows
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._linger_key = None
            if len(batch) > 1:
                self._overlap_recent = _OVERLAP_MEMORY
            elif self._overlap_recent > 0:
                self._overlap_recent -= 1
            return batch

    def _take_compatible(self, key: tuple[Any, ...], room: int) -> list[_Request]:
        """Pop queued requests with the same trailing shapes that fit in `room` rows (FIFO kept for others)."""
        taken: list[_Request] = []
        if not self._queue:
            return taken
        kept: deque[_Request] = deque()
        while self._queue:
            req = self._queue.popleft()
            if req.key == key and req.rows <= room:
                taken.append(req)
                room -= req.rows
                if room == 0:
                    break
            else:
                kept.append(req)
        kept.extend(self._queue)
        self._queue.clear()
        self._queue.extend(kept)
        return taken

    def _live_batches(self) -> Iterator[list[_Request]]:
        """The batches to run, until close: each request's future marked running, cancelled ones left out.

        Every worker (this class's, and subclasses' that run batches elsewhere, as the hub's
        OpenVINO AsyncInferQueue) takes its batches here, so batching and cancellation are one rule.
        """
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if live:
                yield live

    def _count_started(self, batch: list[_Request]) -> None:
        """Count a batch as started (ModelStatistics reads batches, sizes, started and queue_ns)."""
        with self._cond:
            self._stats.batches += 1
            self._stats.rows += sum(r.rows for r in batch)
            self._stats.batch_sizes[len(batch)] = self._stats.batch_sizes.get(len(batch), 0) + 1
            now = time.perf_counter()
            self._stats.started += len(batch)
            self._stats.queue_ns += sum(int((now - r.enqueued) * 1e9) for r in batch)

    def _worker(self) -> None:
        for live in self._live_batches():
            try:
                with self._run_lock:
                    outcomes = self._run_batch(live)
            except Exception as exc:  # a bug here must not leave its callers waiting forever
                log.exception("micro-batcher failed a batch of %d", len(live))
                outcomes = [(req, exc) for req in live]
            # resolved after the lock is released: a waiter woken by its result (the agent's loop,
            # answering and then taking the next request inline) must not find the session still held
            resolve_outcomes(outcomes)

    def _run_batch(self, batch: list[_Request]) -> list[tuple[_Request, Any]]:
        """Each request with its outputs (or its exception); the caller resolves the futures."""
        self._count_started(batch)
        if len(batch) == 1:
            return [self._run_one(batch[0])]
        try:
            outputs = self._timed_run(batch_feeds(batch))
        except Exception as exc:  # one bad request must not fail its neighbours: retry alone
            log.debug("batch of %d failed (%s); running its requests one by one", len(batch), exc)
            return [self._run_one(req) for req in batch]
        return split_outputs(batch, outputs)

    def _timed_run(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        """session.run, timed into `run_ewma_s` (callers hold `_run_lock`, or the session runs concurrently and
        a lost update of this estimate is harmless)."""
        t0 = time.perf_counter()
        outputs = self.session.run(feeds)
        seconds = time.perf_counter() - t0
        ewma = self.run_ewma_s
        if ewma is None:
            self.run_ewma_s = seconds
        else:  # one sample counts at most double: a preempted run must not look like a slow model for long
            self.run_ewma_s = ewma + _RUN_EWMA_WEIGHT * (min(seconds, 2.0 * ewma) - ewma)
        return outputs

    def _run_one(self, req: _Request) -> tuple[_Request, Any]:
        try:
            outputs = self._timed_run(req.feeds)
        except Exception as exc:
            with self._cond:
                self._stats.failed += 1
            return req, exc
        return req, list(outputs)


def batch_feeds(batch: Sequence[_Request]) -> dict[str, np.ndarray]:
    """One feed per input: the batch's requests concatenated along the batch axis (one request: as is)."""
    if len(batch) == 1:
        return dict(batch[0].feeds)
    return {n: np.concatenate([r.feeds[n] for r in batch], axis=0) for n in batch[0].feeds}


def split_outputs(batch: Sequence[_Request], outputs: Sequence[np.ndarray]) -> list[tuple[_Request, Any]]:
    """Each request with its rows of the batch's outputs (views, no copies)."""
    outcomes: list[tuple[_Request, Any]] = []
    start = 0
    for req in batch:
        stop = start + req.rows
        outcomes.append((req, [o[start:stop] for o in outputs]))
        start = stop
    return outcomes


def resolve_outcomes(outcomes: Sequence[tuple[_Request, Any]]) -> None:
    """Hand each request its outputs, or its exception, through its future."""
    for req, outcome in outcomes:
        if isinstance(outcome, BaseException):
            req.future.set_exception(outcome)
        else:
            req.future.set_result(outcome)


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    # per request on the agent's hot path: plain attribute reads, the set only for the message
    first = -2
    for v in feeds.values():
        shape = v.shape if type(v) is np.ndarray else np.shape(v)
        rows = int(shape[0]) if shape else -1
        if first == -2:
            first = rows
        elif rows != first:
            first = -1
    if first < 0:
        sizes = {int(np.shape(v)[0]) if np.ndim(v) else -1 for v in feeds.values()}
        raise ValueError(f"all inputs must share one leading batch axis, got leading sizes {sorted(sizes)}")
    return first


def _group_key(feeds: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple((name, np.asarray(v).dtype.str, tuple(np.shape(v)[1:])) for name, v in sorted(feeds.items()))


__all__ = [
    "BatcherClosedError",
    "BatcherError",
    "BatcherStats",
    "MicroBatcher",
    "QueueFullError",
    "batch_axis_supported",
]
