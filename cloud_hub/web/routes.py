"""JSON the console needs beyond the public REST routes: a device's chart series."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from tandem.cloud_hub.errors import NotFoundError
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, get_hub, require
from tandem.cloud_hub.rest.schemas import ErrorBody
from tandem.cloud_hub.telemetry.routes import get_telemetry
from tandem.cloud_hub.telemetry.rollups import MINUTE
from tandem.cloud_hub.web.series import input_reference, rollup_point, window_point
from tandem.protocols.telemetry_codec import TelemetryDecodeError, decode_window

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/console", tags=["console"], responses=AUTH_RESPONSES, dependencies=[Depends(require("read"))]
)
MAX_POINTS = 2000
CACHE_POINTS = 20_000  # stored windows never change, so a point is computed once (~0.3 ms each)


class _PointCache:
    """(device_id, sequence) -> chart point, least recently used out first; one per app."""

    def __init__(self, size: int = CACHE_POINTS) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> dict[str, Any] | None:
        with self._lock:
            point = self._items.get(key)
            if point is not None:
                self._items.move_to_end(key)
            return point

    def put(self, key: tuple[str, int], point: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = point
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _cache(request: Request) -> _PointCache:
    cache = getattr(request.app.state, "console_points", None)
    if cache is None:
        cache = request.app.state.console_points = _PointCache()
    return cache


class SeriesPoint(BaseModel):
    """One window as a chart point (series.window_point), or, older than raw retention, one minute of the
    device's rollups (series.rollup_point: sequence null, bucket_s 60); rates and means are null when empty."""

    sequence: int | None
    bucket_s: int | None = None
    start_unix: float
    end_unix: float
    model_name: str
    model_version: str
    requests: int
    latency_mean_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    fallback_rate: float | None
    error_rate: float | None
    confidence_mean: float | None
    input_psi: dict[str, float] = Field(description="'input.summary' -> PSI against the model's reference")
    input_psi_max: float | None


class DeliveryOut(BaseModel):
    """End-to-end delivery: last sequence, sequences being asked for again (open) and given up (lost),
    and the device's clock offset (hub minus device, seconds)."""

    last_sequence: int
    missing_open: int
    lost: int
    clock_offset_s: float | None


class SeriesOut(BaseModel):
    device_id: str
    source: str = Field("raw", description="raw: every point a window; rollups: the oldest points are minute rollups")
    points: list[SeriesPoint]
    delivery: DeliveryOut | None = None  # None without telemetry gap tracking


@router.get(
    "/devices/{device_id}/series",
    response_model=SeriesOut,
    responses={503: {"model": ErrorBody, "description": "telemetry ingestion is not running"}},
)
def device_series(
    device_id: str,
    since: float = Query(0.0, ge=0, le=1e12, description="unix seconds"),
    limit: int = Query(300, ge=1, le=MAX_POINTS, description="newest windows to return"),
    hub: Hub = Depends(get_hub),
    telemetry: Any = Depends(get_telemetry),
    cache: _PointCache = Depends(_cache),
) -> dict[str, Any]:
    """The device's newest windows, oldest first, as chart points (latency, fallback rate, confidence, input PSI);
    the part of the range raw retention no longer holds comes from the device's minute rollups."""
    raw_from = telemetry.rollups.raw_complete_since()
    points: list[dict[str, Any]] = []
    source = "raw"
    if since >= raw_from:
        rows = telemetry.store.db.query(
            "SELECT sequence, payload FROM telemetry_windows WHERE device_id=? AND end_unix>=? "
            "ORDER BY sequence DESC LIMIT ?",
            [device_id, since, limit],
        )
    else:  # minute rows before the seam, raw windows from it: each window in one point (receipt clock)
        seam = -(-int(raw_from) // MINUTE) * MINUTE
        rows = telemetry.store.db.query(
            "SELECT sequence, payload FROM telemetry_windows WHERE device_id=? AND received_at>=? "
            "ORDER BY sequence DESC LIMIT ?",
            [device_id, seam, limit],
        )
        room = limit - len(rows)
        if room > 0:
            first = max(since, seam - MINUTE * room)
            older = telemetry.rollups.device_rollups(device_id, MINUTE, first, seam - 1, limit)[-room:]
            points = [rollup_point(r, MINUTE) for r in older]
            source = "rollups" if points else "raw"
    refs: dict[tuple[str, str], dict[str, list[int]]] = {}
    for row in reversed(rows):
        cached = cache.get((device_id, row["sequence"]))
        if cached is not None:
            points.append(cached)
            continue
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
        point = window_point(w, refs[key])
        if refs[key] or not len(w.inputs):  # a model registered later gets its input PSI on the next poll
            cache.put((device_id, row["sequence"]), point)
        points.append(point)
    delivery = None
    if getattr(telemetry, "gaps", None) is not None:
        gaps = telemetry.gaps.device_gaps(device_id)
        delivery = {
            "last_sequence": gaps["last_sequence"],
            "missing_open": len(gaps["open"]),
            "lost": len(gaps["lost"]),
            "clock_offset_s": telemetry.clocks.offset(device_id),
        }
    return {"device_id": device_id, "source": source, "points": points, "delivery": delivery}
