"""Polling helpers for tests: every wait is bounded in time, and says what it waited for."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout_s: float, step_s: float = 0.05) -> bool:
    """True as soon as `predicate()` is truthy; False when it still is not after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


def wait_for_rollout(
    http: Any,
    rollout_id: str,
    statuses: tuple[str, ...],
    settle: Callable[[dict], bool] = lambda body: True,
    timeout_s: float = 60,
) -> dict:
    """The rollout's REST body once its status is one of `statuses` and `settle(body)` holds; else AssertionError."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = http.get(f"/v1/rollouts/{rollout_id}", params={"events": 200}).json()
        if body["status"] in statuses and settle(body):
            return body
        time.sleep(0.1)
    raise AssertionError(
        f"rollout {rollout_id} did not reach {statuses}: {body.get('status')} {body.get('counts')} "
        f"{body.get('reason')} {body.get('quality')}"
    )
