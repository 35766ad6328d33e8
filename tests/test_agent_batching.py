"""The micro-batcher core, on real ONNX Runtime sessions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent_fixtures import make_linear_softmax
from tandem.hardware_profiles.runtimes import load_session
from tandem.hardware_profiles.runtimes.batching import BatcherClosedError, MicroBatcher, QueueFullError


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = make_linear_softmax(tmp_path_factory.mktemp("m") / "lin.onnx", n_in=4, n_out=3)
    s = load_session("onnxruntime", path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def static_session(tmp_path_factory):
    path = make_linear_softmax(tmp_path_factory.mktemp("m") / "lin1.onnx", n_in=4, n_out=3, batch=1)
    return load_session("onnxruntime", path)


def test_concurrent_requests_are_batched_and_split_back_in_order(session):
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(24)]
    expected = [session.run({"x": x})[0] for x in xs]
    with MicroBatcher(session, max_batch=8, window_ms=50) as batcher:
        futures = [batcher.submit({"x": x}) for x in xs]
        results = [f.result(5)[0] for f in futures]
        stats = batcher.stats()
    for x, got, want in zip(xs, results, expected):
        assert got.shape == (x.shape[0], 3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert stats.requests == 24
    assert stats.batches < 24, "requests queued together should share runtime calls"
    assert max(stats.batch_sizes) > 1
    assert stats.rows == sum(x.shape[0] for x in xs)


def test_batches_never_exceed_max_batch_rows(session):
    xs = [np.ones((3, 4), np.float32) for _ in range(10)]
    with MicroBatcher(session, max_batch=4, window_ms=50) as batcher:
        for f in [batcher.submit({"x": x}) for x in xs]:
            f.result(5)
        stats = batcher.stats()
    # 3 rows each and room for 4: no two requests fit together.
    assert stats.batches == 10


def test_static_batch_model_runs_one_request_at_a_time(static_session):
    batcher = MicroBatcher(static_session, max_batch=8, window_ms=20)
    try:
        assert not batcher.batching and batcher.max_batch == 1
        futures = [batcher.submit({"x": np.full((1, 4), i, np.float32)}) for i in range(6)]
        for f in futures:
            assert f.result(5)[0].shape == (1, 3)
        assert batcher.stats().batches == 6
    finally:
        batcher.close()


def test_one_bad_request_fails_alone_not_its_batch(session):
    with MicroBatcher(session, max_batch=8, window_ms=50) as batcher:
        good = [batcher.submit({"x": np.ones((1, 4), np.float32)}) for _ in range(3)]
        bad = batcher.submit({"x": np.ones((1, 4), np.float64)})  # wrong dtype: own group, runtime rejects it
        for f in good:
            assert f.result(5)[0].shape == (1, 3)
        with pytest.raises(Exception):
            bad.result(5)
        assert batcher.stats().failed == 1


def test_full_queue_rejects_and_close_fails_pending(session):
    gate = threading.Event()

    class Blocking:
        inputs, outputs = session.inputs, session.outputs

        def run(self, feeds):
            gate.wait(5)
            return session.run(feeds)

    batcher = MicroBatcher(Blocking(), max_batch=1, window_ms=0, max_queue=2)
    first = batcher.submit({"x": np.ones((1, 4), np.float32)})
    # wait until the worker holds the first request, so the queue counts only waiters
    for _ in range(200):
        if batcher.queue_depth == 0:
            break
        threading.Event().wait(0.005)
    queued = [batcher.submit({"x": np.ones((1, 4), np.float32)}) for _ in range(2)]
    with pytest.raises(QueueFullError, match="full"):
        batcher.submit({"x": np.ones((1, 4), np.float32)})
    assert batcher.stats().rejected == 1
    threading.Timer(0.05, gate.set).start()
    batcher.close()
    assert first.result(5)[0].shape == (1, 3)
    for f in queued:
        with pytest.raises(BatcherClosedError):
            f.result(5)
    with pytest.raises(BatcherClosedError):
        batcher.submit({"x": np.ones((1, 4), np.float32)})


def test_lone_caller_pays_no_window(session):
    import time

    # a 1 s window: a caller that waited for it would take 1 s; half of that is left as margin
    # for a loaded machine (the model itself runs in microseconds)
    with MicroBatcher(session, max_batch=8, window_ms=1000) as batcher:
        x = {"x": np.ones((1, 4), np.float32)}
        batcher.run(x, timeout=5)
        t0 = time.perf_counter()
        for _ in range(5):
            batcher.run(x, timeout=5)
        assert (time.perf_counter() - t0) / 5 < 0.5, "a lone caller must not wait for the 1 s window"


def test_many_threads_get_their_own_answers(session):
    rng = np.random.default_rng(3)
    errors: list[str] = []
    with MicroBatcher(session, max_batch=8, window_ms=1) as batcher:

        def client(seed: int) -> None:
            r = np.random.default_rng(seed)
            for _ in range(30):
                x = r.normal(size=(1, 4)).astype(np.float32)
                got = batcher.run({"x": x}, timeout=5)[0]
                if not np.allclose(got, session.run({"x": x})[0], atol=1e-6):
                    errors.append(f"client {seed} got someone else's answer")

        threads = [threading.Thread(target=client, args=(int(rng.integers(1 << 30)),)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not errors


def test_inline_run_only_when_idle(session):
    gate = threading.Event()

    class Blocking:
        inputs, outputs = session.inputs, session.outputs

        def run(self, feeds):
            gate.wait(5)
            return session.run(feeds)

    x = {"x": np.ones((1, 4), np.float32)}
    with MicroBatcher(session, max_batch=8, window_ms=0) as idle:
        out = idle.try_run_inline(x)
        assert out is not None and out[0].shape == (1, 3) and idle.stats().batches == 1
    busy = MicroBatcher(Blocking(), max_batch=1, window_ms=0)
    try:
        first = busy.submit(x)
        for _ in range(200):  # until the worker holds the runtime
            if busy.queue_depth == 0:
                break
            threading.Event().wait(0.005)
        threading.Event().wait(0.02)
        assert busy.try_run_inline(x) is None, "must not run beside the worker"
        gate.set()
        first.result(5)
    finally:
        gate.set()
        busy.close()


def test_run_in_caller_runs_now_whatever_is_queued_and_takes_the_session_in_turn(session):
    """run_in_caller never hands off: it runs beside a queue, and waits for a session that is not thread-safe."""
    gate = threading.Event()
    active: list[int] = []
    overlap: list[int] = []
    lock = threading.Lock()

    class Blocking:
        inputs, outputs = session.inputs, session.outputs

        def run(self, feeds):
            with lock:
                active.append(1)
                overlap.append(len(active))
            if feeds["x"][0, 0] == 7:  # the worker's request: holds the session until the gate opens
                gate.wait(5)
            try:
                return session.run(feeds)
            finally:
                with lock:
                    active.pop()

    x = {"x": np.ones((1, 4), np.float32)}
    busy = MicroBatcher(Blocking(), max_batch=1, window_ms=0)
    try:
        first = busy.submit({"x": np.full((1, 4), 7, np.float32)})
        queued = busy.submit(x)  # waits behind the first: try_run_inline would give up here
        for _ in range(200):
            if active:
                break
            threading.Event().wait(0.005)
        assert busy.try_run_inline(x) is None
        done: list[object] = []
        caller = threading.Thread(target=lambda: done.append(busy.run_in_caller(x)))
        caller.start()
        caller.join(0.2)
        assert caller.is_alive(), "a session without concurrent_runs is taken in turn"
        gate.set()
        caller.join(5)
        assert done and done[0][0].shape == (1, 3)  # type: ignore[index]
        first.result(5), queued.result(5)
        assert max(overlap) == 1
        assert busy.stats().inline == 1
    finally:
        gate.set()
        busy.close()
    with pytest.raises(BatcherClosedError):
        busy.run_in_caller(x)


def test_run_in_caller_runs_concurrently_on_a_session_that_allows_it(session):
    """ONNX Runtime's sessions declare concurrent_runs: callers do not queue for each other."""
    assert getattr(session, "concurrent_runs", False)
    both = threading.Barrier(2, timeout=5)

    class Meeting:
        concurrent_runs = True
        inputs, outputs = session.inputs, session.outputs

        def run(self, feeds):
            both.wait()  # only returns when two runs are inside at once
            return session.run(feeds)

    x = {"x": np.ones((1, 4), np.float32)}
    with MicroBatcher(Meeting(), max_batch=8, window_ms=0) as batcher:
        results: list[object] = []
        threads = [threading.Thread(target=lambda: results.append(batcher.run_in_caller(x))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(results) == 2 and batcher.stats().inline == 2


def test_a_lingering_worker_starts_as_soon_as_its_batch_is_full(session):
    """Arrivals during the window do not wake the worker one by one, but the one that fills the batch does."""
    import time

    gate = threading.Event()

    class Gated:
        inputs, outputs = session.inputs, session.outputs

        def run(self, feeds):
            gate.wait(5)
            return session.run(feeds)

    x = {"x": np.ones((1, 4), np.float32)}
    with MicroBatcher(Gated(), max_batch=8, window_ms=3000) as batcher:
        first = batcher.submit(x)  # the worker runs it alone and waits at the gate
        for _ in range(200):
            if batcher.queue_depth == 0:
                break
            threading.Event().wait(0.005)
        early = [batcher.submit(x) for _ in range(4)]  # queued behind it: the next batch lingers for 4 more
        gate.set()
        first.result(5)
        threading.Event().wait(0.1)  # the worker now lingers with 4 of 8 rows
        t0 = time.perf_counter()
        late = [batcher.submit(x) for _ in range(4)]
        for f in early + late:
            f.result(5)
        took = time.perf_counter() - t0
        stats = batcher.stats()
    assert took < 1.5, f"the full batch waited {took:.2f} s for its 3 s window"
    assert stats.batch_sizes.get(8) == 1, stats.batch_sizes
