"""OpenVINO asynchronous infer requests behind the hub's micro-batcher: several batches in flight.

An OpenVINO variant is loaded with one synchronous request (the LATENCY hint: one stream),
so under concurrency the batcher ran one batch at a time and the other cores waited. Here
the same model file is also compiled for throughput (`streams` CPU streams) and each batch
the batcher forms is started on an `AsyncInferQueue`; the worker goes straight back to
forming the next batch while up to `streams` run, and each finished request resolves its
callers' futures from OpenVINO's callback. Inline runs (tiny models) still use the session.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tandem.hardware_profiles.runtimes.batching import (
    MicroBatcher,
    batch_feeds,
    resolve_outcomes,
    split_outputs,
)

log = logging.getLogger(__name__)


class AsyncInferBatcher(MicroBatcher):
    """A MicroBatcher whose batches run on an OpenVINO AsyncInferQueue of `streams` requests."""

    def __init__(
        self, session: Any, model_path: Path, *, streams: int = 0, ov_config: Mapping[str, Any] | None = None, **kw: Any
    ) -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT", **(ov_config or {})}
        if streams > 0:
            config["NUM_STREAMS"] = streams
        compiled = ov.Core().compile_model(str(model_path), getattr(session, "device", "CPU"), config)
        jobs = streams if streams > 0 else int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.streams = max(1, jobs)
        self._ov_compiled: Any = compiled
        self._ov_outputs = list(compiled.outputs)
        self._ov_queue: Any = ov.AsyncInferQueue(compiled, self.streams)
        self._ov_queue.set_callback(self._finished)
        super().__init__(session, **kw)  # starts the worker: everything it reads is set above

    def _worker(self) -> None:
        for live in self._live_batches():
            self._count_started(live)
            try:
                feeds = {n: np.ascontiguousarray(a) for n, a in batch_feeds(live).items()}
                self._ov_queue.start_async(feeds, (live, time.perf_counter()))  # waits for an idle request
            except Exception as exc:  # noqa: BLE001 - a batch that cannot start runs the synchronous way
                log.debug("async start of a batch of %d failed (%s); running it synchronously", len(live), exc)
                with self._run_lock:
                    outcomes = [self._run_one(r) for r in live]
                resolve_outcomes(outcomes)
        self._ov_queue.wait_all()

    def _finished(self, request: Any, userdata: tuple[list[Any], float]) -> None:
        """OpenVINO's callback (one of its threads): split the batch's outputs back to its callers."""
        live, t0 = userdata
        seconds = time.perf_counter() - t0
        ewma = self.run_ewma_s
        self.run_ewma_s = seconds if ewma is None else ewma + 0.1 * (min(seconds, 2.0 * ewma) - ewma)
        try:
            outputs = [np.array(request.get_tensor(port).data) for port in self._ov_outputs]  # copies: reused
            outcomes: list[tuple[Any, Any]] = split_outputs(live, outputs)
        except Exception as exc:  # noqa: BLE001 - every caller must hear back
            outcomes = [(req, exc) for req in live]
        resolve_outcomes(outcomes)

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        self._ov_queue = None
        self._ov_compiled = None
