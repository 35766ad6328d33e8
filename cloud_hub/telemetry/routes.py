"""REST for telemetry and drift: per-device and per-model time series, drift status, alerts.

Include with `app.include_router(cloud_hub.telemetry.routes.router)`; the routes find the
running TelemetryIngestService at `app.state.telemetry` or `app.state.hub.telemetry`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from tandem.cloud_hub.errors import ServiceUnavailableError
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Paging, paging, require
from tandem.cloud_hub.rest.schemas import Page
from tandem.cloud_hub.telemetry.rollups import HOUR, MINUTE
from tandem.cloud_hub.telemetry.schemas import (
    ClocksOut,
    DeviceGapsOut,
    DeviceRollupsOut,
    DeviceSeriesOut,
    DriftAlertOut,
    DriftStatusOut,
    GapStatsOut,
    ModelSeriesOut,
    WindowOut,
)

router = APIRouter(responses=AUTH_RESPONSES, dependencies=[Depends(require("read"))])

MAX_SERIES_POINTS = 5000


def get_telemetry(request: Request) -> Any:
    service = getattr(request.app.state, "telemetry", None)
    if service is None:
        service = getattr(getattr(request.app.state, "hub", None), "telemetry", None)
    if service is None:
        raise ServiceUnavailableError("telemetry ingestion is not running on this hub (it needs an MQTT broker)")
    return service


@router.get(
    "/v1/telemetry/windows", response_model=Page[WindowOut], response_model_exclude_unset=True, tags=["telemetry"]
)
def list_windows(
    device_id: str | None = Query(None, max_length=128),
    model_name: str | None = Query(None, max_length=128),
    model_version: str | None = Query(None, max_length=32),
    since: float = Query(0.0, ge=0, description="unix seconds; windows that ended at or after"),
    until: float | None = Query(None, ge=0),
    page: Paging = Depends(paging),
    telemetry: Any = Depends(get_telemetry),
) -> dict[str, Any]:
    """Stored telemetry windows (counts only), newest first."""
    items, total = telemetry.store.list_windows(
        device_id, model_name, model_version, since, until, page.limit, page.offset
    )
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


@router.get(
    "/v1/telemetry/devices/{device_id}",
    response_model=DeviceSeriesOut,
    response_model_exclude_unset=True,
    tags=["telemetry"],
)
def device_series(
    device_id: str,
    since: float = Query(0.0, ge=0),
    until: float | None = Query(None, ge=0),
    limit: int = Query(500, ge=1, le=MAX_SERIES_POINTS),
    source: Literal["auto", "raw", "rollups"] = Query(
        "auto",
        description="auto: the raw windows while they hold the whole range, else the device's minute rollups "
        "(kept [telemetry] device_minute_retention_s; they trail ingest by up to a minute)",
    ),
    telemetry: Any = Depends(get_telemetry),
) -> dict[str, Any]:
    """One device's windows in sequence order: requests by source, latency, samples, dropped windows; for a
    range older than raw retention, its minute rollups (`source` says which)."""
    if source == "auto":
        source = "rollups" if since < telemetry.rollups.raw_complete_since() else "raw"
    if source == "rollups":
        rows = telemetry.rollups.device_rollups(device_id, MINUTE, since, until, limit)
        return {"device_id": device_id, "source": source, "items": [], "rollups": rows}
    items = telemetry.store.device_windows(device_id, since, until, limit)
    return {"device_id": device_id, "source": source, "items": items}


@router.get(
    "/v1/telemetry/models/{model_name}",
    response_model=ModelSeriesOut,
    response_model_exclude_unset=True,
    tags=["telemetry"],
)
def model_series(
    model_name: str,
    model_version: str | None = Query(None, max_length=32),
    since: float = Query(0.0, ge=0),
    until: float | None = Query(None, ge=0),
    bucket_s: float = Query(60.0, ge=1, le=86_400),
    limit: int = Query(1000, ge=1, le=MAX_SERIES_POINTS),
    source: Literal["auto", "raw", "rollups"] = Query(
        "auto",
        description="auto: the raw windows while they hold the whole range, else the per-device rollups (when "
        "bucket_s is a whole number of minutes); rollups trail ingest by up to a minute",
    ),
    telemetry: Any = Depends(get_telemetry),
) -> dict[str, Any]:
    """A model's fleet-wide time series per bucket: windows, devices, requests by source, latency. Long ranges
    come from the rollups (raw windows are kept only for [telemetry] retention_s)."""
    if source == "auto":  # raw while it still holds the whole range (exact and current), else the rollups
        raw_gone = since < telemetry.rollups.raw_complete_since()
        source = "rollups" if raw_gone and bucket_s % MINUTE == 0 else "raw"
    if source == "rollups":
        items = telemetry.rollups.model_series(model_name, model_version, since, until, bucket_s, limit)
    else:
        items = telemetry.store.model_series(model_name, model_version, since, until, bucket_s, limit)
    return {
        "model_name": model_name,
        "model_version": model_version,
        "bucket_s": bucket_s,
        "source": source,
        "items": items,
    }


@router.get(
    "/v1/telemetry/devices/{device_id}/rollups",
    response_model=DeviceRollupsOut,
    response_model_exclude_unset=True,
    tags=["telemetry"],
)
def device_rollups(
    device_id: str,
    resolution: Literal["minute", "hour"] = Query(
        "hour", description="minute rows are kept for [telemetry] minute_retention_s, hour rows for rollup_retention_s"
    ),
    since: float = Query(0.0, ge=0),
    until: float | None = Query(None, ge=0),
    limit: int = Query(1000, ge=1, le=MAX_SERIES_POINTS),
    telemetry: Any = Depends(get_telemetry),
) -> dict[str, Any]:
    """One device's rollup buckets, oldest first: requests by source, samples, latency sum/max/histogram."""
    res = MINUTE if resolution == "minute" else HOUR
    return {
        "device_id": device_id,
        "bucket_s": res,
        "items": telemetry.rollups.device_rollups(device_id, res, since, until, limit),
    }


@router.get("/v1/drift/status", response_model=DriftStatusOut, response_model_exclude_unset=True, tags=["drift"])
def drift_status(
    model_name: str | None = Query(None, max_length=128),
    alert: Literal["open", "closed"] | None = Query(None),
    telemetry: Any = Depends(get_telemetry),
) -> dict[str, Any]:
    """The last evaluation: per (model version, cohort, signal) PSI, JS, chi-square, rates and alert state."""
    status = telemetry.status()
    rows = [
        r
        for r in status["signals"]
        if (model_name is None or r["model_name"] == model_name) and (alert is None or r["alert"] == alert)
    ]
    return {**status, "signals": rows}


@router.get(
    "/v1/telemetry/gaps",
    response_model=GapStatsOut | DeviceGapsOut,
    response_model_exclude_unset=True,
    tags=["telemetry"],
)
def telemetry_gaps(
    device_id: str | None = Query(None, max_length=128), telemetry: Any = Depends(get_telemetry)
) -> dict[str, Any]:
    """Windows missing end to end: fleet counts (open: being asked for again; lost: given up), or one
    device's last sequence and its open and lost sequences."""
    if device_id is not None:
        return telemetry.gaps.device_gaps(device_id)
    return telemetry.gaps.stats()


@router.get("/v1/telemetry/clocks", response_model=ClocksOut, response_model_exclude_unset=True, tags=["telemetry"])
def telemetry_clocks(telemetry: Any = Depends(get_telemetry)) -> dict[str, Any]:
    """Each device's clock offset (hub time minus device time, delivery delay included, seconds), from
    its recent windows; windows are filed and filtered on the hub's receipt time whatever this says."""
    return {"offsets_s": telemetry.clocks.offsets()}


@router.get("/v1/drift/alerts", response_model=Page[DriftAlertOut], response_model_exclude_unset=True, tags=["drift"])
def drift_alerts(
    state: Literal["open", "closed"] | None = Query(None),
    model_name: str | None = Query(None, max_length=128),
    page: Paging = Depends(paging),
    telemetry: Any = Depends(get_telemetry),
) -> dict[str, Any]:
    """Drift alerts, newest first, with the statistics at opening and at the last change."""
    items, total = telemetry.store.alerts(state, model_name, page.limit, page.offset)
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}
