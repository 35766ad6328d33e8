"""REST: /v1/rollouts — start (operate), list and inspect (read), pause/resume/abort/rollback (operate)."""

from __future__ import annotations

from typing import Any, Callable, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from tandem.cloud_hub.errors import InvalidInputError, ServiceUnavailableError
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, Paging, get_hub, paging, require
from tandem.cloud_hub.rest.schemas import ErrorBody, Page, StrictIn
from tandem.cloud_hub.rollouts.controller import GatePolicy, RolloutError
from tandem.cloud_hub.rollouts.schemas import RolloutDetailOut, RolloutSummaryOut
from tandem.cloud_hub.rollouts.service import rollout_detail, rollout_summary

router = APIRouter(prefix="/v1/rollouts", tags=["ota"], responses=AUTH_RESPONSES)
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such rollout"}}
_409: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "the rollout's state does not allow this"}
}


class GatesIn(StrictIn):
    max_failure_rate: float = Field(0.0, ge=0, le=1)
    max_fallback_rise: float = Field(0.10, ge=0, le=1)
    max_latency_ratio: float = Field(2.0, gt=0, le=1000)
    max_drift_alerts: int = Field(0, ge=0, le=1_000_000)
    min_reporting: float = Field(0.8, ge=0, le=1)
    min_devices: int = Field(1, ge=1, le=1_000_000)
    wave_timeout_s: float | None = Field(900.0, gt=0, le=30 * 86400)
    auto_rollback: bool = True
    control_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the selection kept on its current version as a control cohort (never sent a command)",
    )
    control_devices: int = Field(0, ge=0, le=1_000_000, description="or at least this many control devices")
    min_quality_requests: int = Field(200, ge=1, le=10**9, description="requests per cohort before quality decides")
    max_fallback_rise_vs_control: float = Field(0.10, ge=0, le=1)
    max_error_rise_vs_control: float = Field(0.05, ge=0, le=1)
    max_confidence_drop_vs_control: float = Field(0.10, ge=0, le=1)
    max_confidence_psi_vs_control: float | None = Field(0.25, ge=0, le=100, description="null: not gated")
    max_class_psi_vs_control: float | None = Field(0.25, ge=0, le=100, description="null: not gated")
    max_agreement_drop_vs_control: float | None = Field(
        0.05, ge=0, le=1, description="shadow agreement with the cloud model, wave below control; null: not gated"
    )
    min_shadow_samples: int = Field(100, ge=1, le=10**9, description="shadow samples per cohort before it decides")


class RolloutIn(StrictIn):
    model: str = Field(..., min_length=1, max_length=128)
    version: str = Field(..., min_length=5, max_length=32)
    select: dict[str, str] = Field(default_factory=dict, description="profile=..., and tag key=value pairs")
    waves: list[int] = Field(default_factory=lambda: [5, 25, 100], min_length=1, max_length=20)
    gates: GatesIn = Field(default_factory=GatesIn)
    device_ids: list[str] | None = Field(None, max_length=100_000, description="restrict to these devices")


def _service(hub: Any) -> Any:
    service = getattr(hub, "rollouts", None)
    if service is None:
        raise ServiceUnavailableError(
            "OTA rollouts are not running on this hub (rollouts.enabled, env TANDEM_HUB_ROLLOUTS_ENABLED)"
        )
    return service


@router.post(
    "",
    status_code=201,
    response_model=RolloutDetailOut,
    response_model_exclude_unset=True,
    dependencies=[Depends(require("operate"))],
    responses={
        404: {"model": ErrorBody, "description": "model version not registered"},
        422: {"model": ErrorBody, "description": "bad waves, gates or no matching device"},
    },
)
def start_rollout(body: RolloutIn, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Roll a registered version out in waves; wave 1 is sent at once."""
    try:
        gates = GatePolicy(**body.gates.model_dump())
    except RolloutError as exc:
        raise InvalidInputError(str(exc)) from exc
    r = _service(hub).create(body.model, body.version, body.select, body.waves, gates, body.device_ids)
    return rollout_detail(r)


@router.get(
    "",
    response_model=Page[RolloutSummaryOut],
    response_model_exclude_unset=True,
    dependencies=[Depends(require("read"))],
)
def list_rollouts(
    status: Literal["running", "paused", "halted", "completed", "aborted", "rolled_back"] | None = Query(None),
    page: Paging = Depends(paging),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    items, total = _service(hub).list(status, page.limit, page.offset)
    return {"items": [rollout_summary(r) for r in items], "total": total, "limit": page.limit, "offset": page.offset}


@router.get(
    "/{rollout_id}",
    response_model=RolloutDetailOut,
    response_model_exclude_unset=True,
    responses=_404,
    dependencies=[Depends(require("read"))],
)
def get_rollout(
    rollout_id: str,
    events: int = Query(50, ge=0, le=1000, description="recent events to include"),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    service = _service(hub)
    data = rollout_detail(service.get(rollout_id))
    if events:
        data["events"] = service.store.recent_events(rollout_id, events)
    return data


def _action(name: str) -> Callable[..., dict[str, Any]]:
    def act(rollout_id: str, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
        return rollout_detail(getattr(_service(hub), name)(rollout_id))

    act.__name__ = f"{name}_rollout"
    act.__doc__ = {
        "pause": "Send no more commands and open no wave until resumed.",
        "resume": "Continue a paused (or halted, not rolled back) rollout.",
        "abort": "Stop for good; devices keep what they run.",
        "rollback": "Tell every device that took this version to go back to its previous one.",
    }[name]
    return act


for _name in ("pause", "resume", "abort", "rollback"):
    router.add_api_route(
        f"/{{rollout_id}}/{_name}",
        _action(_name),
        methods=["POST"],
        response_model=RolloutDetailOut,
        response_model_exclude_unset=True,
        responses={**_404, **_409},
        dependencies=[Depends(require("operate"))],
    )
