"""The hub's wall clock is stepped (NTP, a resumed VM) while a rollout's wave is in its watch.

A wave's timeout is a duration: a step forward past wave_timeout_s must not halt a healthy wave (and
roll its devices back), a step back must neither stall the rollout's ticks nor hold the wave open for
as long as the clock went back. Real parts: the rollout store on a SQLite file, the controller and the
service's own worker loop; both clocks are injected (the test must not move the machine's clock) and
the commands the service would publish are recorded instead of sent (no model registry here).
"""

from __future__ import annotations

import threading
import time

import pytest

from tandem.cloud_hub.rollouts import controller as ctl
from tandem.cloud_hub.rollouts.service import RolloutService, RolloutServiceConfig
from tandem.cloud_hub.rollouts.store import RolloutStore
from waiting import wait_for

HOUR = 3600.0
TIMEOUT_S = 900.0
HEALTH = {"current": {"requests": 50, "fallback_rate": 0.0, "latency_p95_ms": 2.0}}


class Clocks:
    """A wall clock the test steps and a monotonic clock that only moves forward, both from `t`
    (plus the real time since `live()`, for the worker loop)."""

    def __init__(self) -> None:
        self.t = 1_000_000.0
        self.step = 0.0
        self._real0: float | None = None

    def live(self) -> None:
        self._real0 = time.monotonic()

    def mono(self) -> float:
        return self.t + (0.0 if self._real0 is None else time.monotonic() - self._real0)

    def wall(self) -> float:
        return self.mono() + self.step


@pytest.fixture
def rollout(tmp_path):
    clocks = Clocks()
    store = RolloutStore.open(tmp_path / "rollouts.db")
    service = RolloutService(
        store,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        RolloutServiceConfig(mqtt_url="mqtt://127.0.0.1:1", public_url="http://127.0.0.1:1"),
        clock=clocks.wall,
        monotonic=clocks.mono,
    )
    sent: list[ctl.Send] = []
    service._send = lambda r, s: sent.append(s)  # type: ignore[method-assign]
    r, sends, events = ctl.new_rollout(
        "r1",
        "toy",
        "1.1.0",
        ["d1", "d2", "d3", "d4"],
        [50, 100],
        ctl.GatePolicy(wave_timeout_s=TIMEOUT_S),
        clocks.wall(),
    )
    service._rollouts[r.rollout_id] = r
    service._commit(r, sends, events)
    first, second = [s.device_id for s in sends]
    ctl.on_status(r, first, "committed", "ok", "", HEALTH, clocks.wall())  # one healthy, one still watching
    sent.clear()
    service._tick()
    assert r.status == "running" and not sent
    try:
        yield service, r, clocks, sent, second
    finally:
        service.stop()
        store.close()


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_clock_step_neither_halts_nor_rolls_back_a_healthy_wave(rollout, step):
    service, r, clocks, sent, second = rollout
    clocks.t += 60.0
    clocks.step = step
    service._tick()
    assert r.status == "running", f"a {step:+g} s clock step halted the wave: {r.reason}"
    assert not [s for s in sent if s.action == "rollback"]
    ctl.on_status(r, second, "committed", "ok", "", HEALTH, clocks.wall())
    service._tick()
    assert r.wave == 1 and r.status == "running", r.reason  # the gate judged the wave on its figures
    assert {s.device_id for s in sent if s.action == "install"} == {d for d, p in r.devices.items() if p.wave == 1}


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_after_a_clock_step_a_silent_wave_still_times_out_on_its_own_duration(rollout, step):
    service, r, clocks, sent, second = rollout
    clocks.t += 60.0
    clocks.step = step
    service._tick()
    clocks.t += TIMEOUT_S - 120.0  # 840 s of the wave's 900 s so far
    service._tick()
    assert r.status == "running", r.reason
    clocks.t += 61.0
    service._tick()
    assert r.status == "halted" and f"within {TIMEOUT_S:g}s" in r.reason


def test_the_worker_keeps_ticking_after_the_clock_steps_back(rollout):
    service, r, clocks, sent, second = rollout
    ticks = [0]
    tick = service._tick

    def counted() -> None:
        ticks[0] += 1
        tick()

    service._tick = counted  # type: ignore[method-assign]
    clocks.live()
    service._worker = threading.Thread(target=service._run, daemon=True)
    service._worker.start()
    assert wait_for(lambda: ticks[0] >= 2, 10)
    clocks.step = -HOUR
    seen = ticks[0]
    assert wait_for(lambda: ticks[0] >= seen + 3, 10), "the rollout worker stopped ticking after the clock went back"


def test_telemetry_gaps_are_still_asked_for_after_the_hub_clock_steps_back(tmp_path):
    """A gap stamped before the step would wait for as long as the clock went back: by then the agent's
    replay store (an hour by default) may have let the window go, and a recoverable loss becomes final."""
    from tandem.cloud_hub.telemetry.gaps import GapPolicy, GapTracker
    from tandem.cloud_hub.telemetry.store import TelemetryStore

    clocks = Clocks()
    store = TelemetryStore.open(tmp_path / "telemetry.sqlite")
    asked: list[str] = []
    policy = GapPolicy(ask_after_s=5.0, ask_every_s=30.0, max_asks=2)
    gaps = GapTracker(store, lambda device, payload: asked.append(device), policy, clocks.wall)
    gaps.note([("dev", 1), ("dev", 3)])  # 2 went missing in the broker
    clocks.t += 1.0
    clocks.step = -HOUR
    assert gaps.tick() == 0  # not yet: it may still arrive
    clocks.t += policy.ask_after_s + 1
    assert gaps.tick() == 1 and asked == ["dev"], "a gap opened before the clock went back was not asked for"
    clocks.t += policy.ask_every_s + 1
    assert gaps.tick() == 1 and gaps.stats()["lost"] == 0  # asked again on the new clock, not given up at once
    gaps.note([("dev", 2)])
    assert gaps.stats()["open"] == 0 and gaps.recovered == 1
    store.db.close()
