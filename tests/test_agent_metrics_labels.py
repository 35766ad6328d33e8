"""Every per-model series of the agent's /metrics names its model, version and variant, and an OTA
swap starts new series: what the previous variant answered stays counted under its own labels."""

from __future__ import annotations

import re

from tandem.edge_agent.metrics import AgentMetrics

PER_MODEL = (
    "tandem_agent_requests_total",
    "tandem_agent_errors_total",
    "tandem_agent_request_seconds",
    "tandem_agent_runtime_seconds",
    "tandem_agent_fallback_seconds",
    "tandem_agent_fallback_total",
    "tandem_agent_fallback_ratio",
    "tandem_agent_mode_decisions_total",
    "tandem_agent_shadow_samples_total",
    "tandem_agent_shadow_agree_total",
    "tandem_agent_shadow_agreement_ratio",
    "tandem_agent_shadow_failures_total",
    "tandem_agent_batches_total",
)
_SAMPLE = re.compile(r"^(\w+?)(?:_bucket|_sum|_count)?(\{[^}]*\})? (\S+)$")


def samples(text: str, family: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#")
        and (m := _SAMPLE.match(line))
        and line.startswith(family)
        and (m.group(1) == family or m.group(1).startswith(family))
    ]


def test_every_per_model_series_is_labelled_and_a_swap_keeps_the_old_counts_apart():
    metrics = AgentMetrics()
    old = metrics.for_model("digits", "1.0.0", "ort-fp32")
    metrics.counter("tandem_agent_batches_total", "Runtime calls.", lambda: 7, per_model=True)
    for _ in range(3):
        old.observe_request("edge", 0.001)
        old.observe_decision("edge")
    old.observe_fallback(0.02)
    old.observe_request("cloud", 0.03)
    new = metrics.for_model("digits", "1.1.0", "ov-int8")  # the OTA swap
    new.observe_request("edge", 0.001)
    new.observe_request("error", 0.001, "bad_request")
    text = metrics.render()
    old_labels = 'model="digits",version="1.0.0",variant="ort-fp32"'
    new_labels = 'model="digits",version="1.1.0",variant="ov-int8"'
    for family in PER_MODEL:
        lines = samples(text, family)
        assert lines, f"{family} missing"
        unlabelled = [line for line in lines if 'model="digits"' not in line or 'variant="' not in line]
        assert not unlabelled, f"{family} has series without model/variant labels: {unlabelled}"
    assert f'tandem_agent_requests_total{{{old_labels},source="edge"}} 3' in text
    assert f'tandem_agent_requests_total{{{new_labels},source="edge"}} 1' in text
    assert f"tandem_agent_fallback_total{{{old_labels}}} 1" in text
    assert f"tandem_agent_fallback_total{{{new_labels}}} 0" in text
    assert f'tandem_agent_errors_total{{{new_labels},code="bad_request"}} 1' in text
    assert f"tandem_agent_batches_total{{{new_labels}}} 7" in text  # the batcher belongs to the variant served now
    # the agent-wide totals the health watch and tests read still add up over both variants
    assert metrics.fallback_attempts == 1 and metrics.decisions["edge"] == 3


def test_agent_wide_gauges_carry_no_model_labels():
    metrics = AgentMetrics()
    metrics.for_model("m", "1.0.0", "v")
    metrics.gauge("tandem_agent_inflight_requests", "In flight.", lambda: 2)
    assert "tandem_agent_inflight_requests 2" in metrics.render()
