"""One served model version: its loaded variant, policy, micro-batcher and request service.

A hot swap builds and warms a new `Serving` beside the old one; the agent flips its
reference on the I/O loop thread (so no synchronous request is mid-way), then the old
one is drained of requests still waiting on its batcher or the hub, and closed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from tandem.edge_agent.model import LoadedModel
from tandem.edge_agent.policy import ConfidencePolicy
from tandem.edge_agent.service import InferenceService
from tandem.hardware_profiles.runtimes.batching import MicroBatcher

log = logging.getLogger(__name__)

WARM_UP_RUNS = 2


@dataclass
class Serving:
    model: LoadedModel
    policy: ConfidencePolicy
    batcher: MicroBatcher
    service: InferenceService

    @property
    def version(self) -> str:
        return self.model.version

    def warm_up(self, runs: int = WARM_UP_RUNS) -> float:
        """Run zeros shaped like the inputs (dynamic axes as 1) through the batcher; returns the last run's seconds.

        The first runs of a fresh session pay allocation and kernel selection; a swapped-in
        model pays them here, not on a user's request.
        """
        buckets = self.model.buckets
        served = dict(buckets.buckets[0].inputs) if buckets is not None else {}  # a static bucket's own shape
        feeds = {
            spec.name: np.zeros(
                served.get(spec.name) or [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape],
                dtype=np.dtype(spec.dtype),
            )
            for spec in self.model.input_specs
        }
        elapsed = 0.0
        for _ in range(runs):
            t0 = time.perf_counter()
            self.batcher.run(self.model.runtime_feeds(feeds), timeout=30.0)
            elapsed = time.perf_counter() - t0
        return elapsed

    def drain(self, timeout_s: float) -> bool:
        """Wait until no request of this service waits on its batcher or the hub; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.service.pending > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        try:
            self.batcher.close()
        finally:
            self.model.close()
