"""Each built-in scenario at small scale against a real hub and broker, asserting its outcome.

Durations are shortened (event times scale with them); outcomes are what the
scenario promises: no alert on a steady fleet, nothing lost across a hub outage,
a drift alert within a bounded number of windows, a good rollout completed, a bad
one halted with every device back on the previous version, a mixed fleet serving
each profile's own variant.
"""

from __future__ import annotations

import pytest

from tandem.sim.releases import BASE_VERSION
from tandem.sim.runner import DEFAULT_PROFILES, run_scenario
from tandem.sim.scenario import load_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_models(digits_dir, tmp_path_factory):
    from tandem.sim.releases import prepare

    return prepare(tmp_path_factory.mktemp("sim-models"), DEFAULT_PROFILES, digits_dir)


def _run(name, sim_models, tmp_path, devices, duration):
    scenario = load_scenario(name).scaled(devices, duration)
    result = run_scenario(scenario, tmp_path / name, models=sim_models)
    return result, result.summary


def _failed(result):
    return [c for c in result.checks if not c["passed"]]


def test_steady_fleet_serves_mostly_on_the_edge_and_loses_no_telemetry(sim_models, tmp_path):
    result, s = _run("steady", sim_models, tmp_path, devices=6, duration=10)
    assert not _failed(result), result.checks
    assert s["requests"] > 100 and s["by_source"]["edge"] > s["by_source"]["cloud"] > 0
    assert s["telemetry"]["sent"] == s["telemetry"]["hub"] > 0
    assert not s["alerts"]


def test_hub_outage_devices_keep_serving_and_telemetry_arrives_after(sim_models, tmp_path):
    result, s = _run("hub_outage", sim_models, tmp_path, devices=4, duration=14)
    assert not _failed(result), result.checks
    during = [r for r in result.timeline if r.get("outage")]
    assert during, "the outage never showed in the timeline"
    assert sum(r.get("requests", 0) for r in during) > 0, "devices stopped serving during the outage"
    assert s["by_source"]["edge_degraded"] > 0
    assert max(r.get("outbox_pending", 0) for r in during) > 0, "telemetry did not wait in the outboxes"
    assert sum(r.get("edge_degraded", 0) for r in during) > 0, "fallbacks during the outage were not degraded"
    # nothing lost: the hub stored exactly the windows the devices numbered
    assert s["telemetry"]["hub"] == s["telemetry"]["sent"] and s["telemetry"]["pending"] == 0
    # one of them was a real tandem-agent process: it served throughout and its windows are counted in
    (agent,) = s["agent_processes"]
    assert agent["answers"] > 20 and agent["windows_sent"] > 0 and agent["windows_pending"] == 0


def test_drift_injected_mid_run_raises_an_alert_within_bounded_windows(sim_models, tmp_path):
    result, s = _run("drift", sim_models, tmp_path, devices=6, duration=26)
    assert not _failed(result), result.checks
    assert s["first_alert_s"] is not None and s["first_alert_s"] >= s["drift_at_s"]
    assert any(a["signal"].startswith("input:") for a in s["alerts"])


def test_good_rollout_completes_on_every_device(sim_models, tmp_path):
    result, s = _run("rollout_good", sim_models, tmp_path, devices=4, duration=16)
    assert not _failed(result), result.checks
    r = s["rollout"]
    assert r["status"] == "completed" and r["counts"] == {"committed": 4}
    assert r["store_active"] == ["1.1.0"] and s["serving"] == {"1.1.0": 4}


def test_bad_rollout_is_halted_and_devices_end_on_the_old_version(sim_models, tmp_path):
    result, s = _run("rollout_bad", sim_models, tmp_path, devices=4, duration=10)
    assert not _failed(result), result.checks
    r = s["rollout"]
    assert r["status"] == "halted" and "fallback rate" in r["reason"]
    assert r["store_active"] == [BASE_VERSION] and s["serving"] == {BASE_VERSION: 4}
    assert r["counts"].get("pending", 0) >= 2, "later waves must never receive the bad release"
    assert [a["version"] for a in s["agent_processes"]] == [BASE_VERSION]  # the real agent too


def test_mixed_profiles_each_serve_their_own_variant_through_faults(sim_models, tmp_path):
    result, s = _run("mixed", sim_models, tmp_path, devices=6, duration=12)
    assert not _failed(result), result.checks
    assert s["variants"] == {"cpu-arm": "litert-fp32", "gpu-cuda": "onnxruntime-fp16", "npu-litert": "litert-int8"}
    assert len(s["sessions"]) == 3 and sum(x["users"] for x in s["sessions"]) == 6
    assert s["telemetry"]["hub"] == s["telemetry"]["sent"]
    assert any("stalled" in e for e in s["events"]) and any("healed" in e for e in s["events"])
