"""A client that keeps sending requests to a real agent from a thread, recording every answer."""

from __future__ import annotations

import threading
import time

import numpy as np

from tandem.edge_agent.client import AgentClient


class Load:
    """One sequential client: requests one row at a time (rows cycle over `inputs`) until stop()."""

    def __init__(
        self, endpoint: str, inputs: np.ndarray, pause_s: float = 0.002, timeout_s: float = 10.0, mode: str = "auto"
    ) -> None:
        self.endpoint = endpoint
        self.inputs = inputs
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.mode = mode
        self.versions: list[str] = []  # model version of each answer, in order
        self.sources: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-load", daemon=True)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def _run(self) -> None:
        with AgentClient(self.endpoint, timeout_s=self.timeout_s) as client:
            i = 0
            while not self._stop.is_set():
                row = self.inputs[i % len(self.inputs)][None]
                i += 1
                try:
                    answer = client.infer(row, mode=self.mode)
                except Exception as exc:  # any error reply or timeout is a failed request
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    self.versions.append(answer.model_version)
                    self.sources.append(answer.source)
                self._stop.wait(self.pause_s)

    def wait_answers(self, n: int, timeout_s: float = 30.0) -> bool:
        """Until at least `n` answers in all have arrived."""
        deadline = time.monotonic() + timeout_s
        while len(self.versions) < n:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> "Load":
        self._stop.set()
        self._thread.join(self.timeout_s + 5)
        return self


def version_runs(versions: list[str]) -> list[tuple[str, int]]:
    """Consecutive runs, e.g. [("1.0.0", 120), ("1.1.0", 80)]: one switch is two runs."""
    runs: list[tuple[str, int]] = []
    for v in versions:
        if runs and runs[-1][0] == v:
            runs[-1] = (v, runs[-1][1] + 1)
        else:
            runs.append((v, 1))
    return runs
