"""JSON the console needs beyond the public REST routes: a device's chart series."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from cloud_hub.errors import NotFoundError
from cloud_hub.rest.deps import AUTH_RESPONSES, get_hub, require
from cloud_hub.rest.schemas import ErrorBody
from cloud_hub.telemetry.routes import get_telemetry
from cloud_hub.web.series import input_reference, window_point
from protocols.telemetry_codec import TelemetryDecodeError, decode_window

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/console", tags=["console"], responses=AUTH_RESPONSES,
                   dependencies=[Depends(require("read"))])
MAX_POINTS = 2000


class SeriesOut(BaseModel):
    device_id: str
    points: list[dict[str, Any]]


@router.get("/devices/{device_id}/series", response_model=SeriesOut,
            responses={503: {"model": ErrorBody, "description": "telemetry ingestion is not running"}})
def device_series(device_id: str, since: float = Query(0.0, ge=0, le=1e12, description="unix seconds"),
                  limit: int = Query(300, ge=1, le=MAX_POINTS, description="newest windows to return"),
                  hub: Any = Depends(get_hub), telemetry: Any = Depends(get_telemetry)) -> dict[str, Any]:
    """The device's newest windows, oldest first, as chart points (latency, fallback rate, confidence, input PSI)."""
    rows = telemetry.store.db.query(
        "SELECT payload FROM telemetry_windows WHERE device_id=? AND end_unix>=? ORDER BY sequence DESC LIMIT ?",
        [device_id, since, limit])
    refs: dict[tuple[str, str], dict[str, list[int]]] = {}
    points = []
    for row in reversed(rows):
        try:
            w = decode_window(row["payload"])
        except TelemetryDecodeError as exc:  # stored by an older hub, or damaged: skip, never fail the page
            log.warning("stored window unreadable device=%s error=%s", device_id, exc)
            continue
        key = (w.model_name, w.model_version)
        if key not in refs:
            try:
                refs[key] = input_reference(hub.registry.manifest(*key))
            except NotFoundError:
                refs[key] = {}
        points.append(window_point(w, refs[key]))
    return {"device_id": device_id, "points": points}
