"""Tandem's simulator: virtual devices running the agent's real cores against a real hub and broker.

Module map: streams (per-device data with scheduled changes), emulation (profile speed,
budgets, connectivity), sessions (shared model sessions), device (one virtual device),
uplink (shared MQTT telemetry, per-device outboxes), fleet (shards of devices on a few
threads), agent_proc (real tandem-agent processes), netfault (fault proxy), environment
(broker + hub + proxies), releases (models and rollout releases), scenario (YAML),
runner (the timeline and checks), report (markdown, JSON, plots), demo, cli.
"""

from typing import Any

__all__ = ["RunResult", "Scenario", "ScenarioError", "load_scenario", "run_scenario"]
_HOME = {
    "RunResult": "tandem.sim.runner",
    "run_scenario": "tandem.sim.runner",
    "Scenario": "tandem.sim.scenario",
    "ScenarioError": "tandem.sim.scenario",
    "load_scenario": "tandem.sim.scenario",
}


def __getattr__(name: str) -> Any:
    """Lazy, so `tandem-sim --help` does not import the hub, gRPC and the runtimes."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
