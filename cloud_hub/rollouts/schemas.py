"""Response shapes of /v1/rollouts (summary, detail, events), so generated clients get typed objects.

Field names follow `service.rollout_summary`/`rollout_detail` and the controller's events;
`extra="allow"` keeps a field added later flowing through instead of being dropped silently.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tandem.cloud_hub.rollouts.controller import GatePolicy


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class CohortFiguresOut(_Out):
    """One cohort's summed telemetry over the quality span (quality.CohortFigures.as_dict)."""

    devices: int
    windows: int
    requests: int
    fallback_rate: float
    error_rate: float
    mean_confidence: float | None
    shadow_samples: int
    agreement: float | None
    budget_spent: int


class QualityOut(_Out):
    """The last wave-vs-control comparison the quality gate judged (empty before the first)."""

    wave: CohortFiguresOut | None = None
    control: CohortFiguresOut | None = None
    since: float | None = None
    until: float | None = None
    confidence_psi: float | None = None
    class_psi: float | None = None


class RolloutSummaryOut(_Out):
    rollout_id: str
    model: str
    version: str
    status: str = Field(description="running, paused, halted, completed, aborted or rolled_back")
    wave: int = Field(description="the open wave, from 1")
    waves: list[int] = Field(description="cumulative percent of the selection per wave")
    reason: str
    devices: int
    counts: dict[str, int] = Field(description="device state -> how many devices are in it")
    created_at: float
    updated_at: float


class DeviceStateOut(_Out):
    device_id: str
    wave: int
    state: str
    step: str | None
    reason: str
    updated_at: float | None


class EventDetailOut(_Out):
    """What an event says; which fields are present depends on its kind (created, wave_opened,
    device_step, gate_passed, quality_gate, halted, completed, rollback_sent, rolled_back, clock_stepped, ...).
    In a quality_gate event `wave` and `control` are the cohorts' figures, elsewhere counts."""

    devices: int | None = None
    waves: list[int] | None = None
    wave_sizes: list[int] | None = None
    control: int | CohortFiguresOut | None = None
    wave: int | CohortFiguresOut | None = None
    percent: int | None = None
    sent: int | None = None
    step: str | None = None
    result: str | None = None
    reason: str | None = None
    kept: str | None = None
    verdict: str | None = None
    reported: int | None = None
    opened: int | None = None
    quality: QualityOut | None = None
    by: str | None = None
    since: float | None = None
    until: float | None = None
    confidence_psi: float | None = None
    class_psi: float | None = None


class RolloutEventOut(_Out):
    id: int
    at: float
    kind: str
    device_id: str | None
    detail: EventDetailOut


class RolloutDetailOut(RolloutSummaryOut):
    gates: GatePolicy
    control: list[str] = Field(description="devices kept on their current version as the control cohort")
    quality: QualityOut
    device_states: list[DeviceStateOut]
    events: list[RolloutEventOut] | None = Field(None, description="recent events (GET with ?events=N)")
