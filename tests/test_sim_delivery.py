"""A scenario whose fleet fell behind its request rate fails, with the figure; progress shows offered vs delivered."""

from __future__ import annotations

from types import SimpleNamespace

from tandem.sim.fleet import Fleet
from tandem.sim.runner import MIN_DELIVERED_RATIO, _checks, _line
from tandem.sim.scenario import load_scenario


def _summary(requests: int, offered: float) -> dict:
    return {
        "requests": requests,
        "offered": offered,
        "delivered_ratio": requests / offered,
        "telemetry": {"hub": 5, "sent": 5, "pending": 0},
        "alerts": [],
        "drift_at_s": None,
        "first_alert_s": None,
        "rollout": None,
        "latency_p99_ms": 1.0,
    }


def test_a_fleet_that_delivered_half_its_requests_fails_the_scenario_with_the_figure():
    steady = load_scenario("steady")
    (check,) = [c for c in _checks(steady, _summary(111_326, 240_000)) if c["name"] == "requests delivered"]
    assert not check["passed"]
    assert "delivered 111326 of 240000 offered requests (46.4%" in check["detail"]
    (ok,) = [c for c in _checks(steady, _summary(2390, 2400.0)) if c["name"] == "requests delivered"]
    assert ok["passed"] and MIN_DELIVERED_RATIO == 0.99


def test_backlog_counts_what_devices_behind_schedule_still_owe():
    on_time = SimpleNamespace(next_at=10.4, spec=SimpleNamespace(rate_hz=2.0))
    behind = SimpleNamespace(next_at=4.0, spec=SimpleNamespace(rate_hz=2.0))  # 6 s behind at t=10: 12 requests owed
    silent = SimpleNamespace(next_at=float("inf"), spec=SimpleNamespace(rate_hz=0.0))
    assert Fleet.backlog(SimpleNamespace(devices=[on_time, behind, silent]), 10.0) == 12.0


def test_progress_shows_offered_and_delivered():
    sample = {"t": 30.0, "hub_windows": 3, "outbox_pending": 0, "alerts_open": 0, "offered": 240.0, "delivered": 120}
    line = _line(sample, {"requests": 13}, 60.0, 500)
    assert "delivered=120/240 offered (50.0%)" in line


def test_relative_sim_paths_are_made_absolute_once(tmp_path, monkeypatch):
    from tandem.sim.cli import absolute_paths, build_parser

    monkeypatch.chdir(tmp_path)
    args = absolute_paths(build_parser().parse_args(["run", "hub_outage", "--report", "out/outage"]))
    assert args.workdir == tmp_path / "tandem-sim-work" and args.report == tmp_path / "out" / "outage"


def test_an_agent_that_exits_at_once_is_reported_as_exited_with_its_last_lines(tmp_path):
    import subprocess
    import sys
    import time

    import pytest

    from tandem.sim.agent_proc import AgentProcess, AgentProcessError

    agent = AgentProcess.__new__(AgentProcess)  # the process only: what launch() would start, failing at once
    agent.device_id, agent._client, agent.log_path = "dev-1", None, tmp_path / "agent.log"
    with open(agent.log_path, "wb") as log_file:
        agent._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys\nfor i in range(40): print('line', i)\n"
                "print('tandem-agent: model.dir: no manifest.json', file=sys.stderr)\n"
                "sys.exit(2)",
            ],
            stdout=log_file,
            stderr=log_file,
        )
    started = time.monotonic()
    with pytest.raises(AgentProcessError) as info:
        agent.wait_ready(timeout_s=60)
    assert time.monotonic() - started < 30  # not the whole start timeout
    text = str(info.value)
    assert "dev-1 exited with status 2" in text and "did not start" not in text
    assert text.rstrip().endswith("tandem-agent: model.dir: no manifest.json") and "line 20" not in text
