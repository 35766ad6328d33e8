"""Routes the telemetry and drift issues fill in; until then they answer empty pages.

Empty lists (not 501) so dashboards and scripts written now keep working when the
data arrives; `note` says which issue brings it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloud_hub.rest.deps import AUTH_RESPONSES, Paging, paging, require
from cloud_hub.rest.schemas import Page

router = APIRouter(responses=AUTH_RESPONSES, dependencies=[Depends(require("read"))])


def _empty(page: Paging, note: str) -> dict[str, Any]:
    return {"items": [], "total": 0, "limit": page.limit, "offset": page.offset, "note": note}


@router.get("/v1/telemetry/windows", response_model=Page[dict[str, Any]], tags=["telemetry"])
def telemetry_windows(page: Paging = Depends(paging)) -> dict[str, Any]:
    return _empty(page, "telemetry ingestion arrives with the telemetry issue; this list is empty until then")


@router.get("/v1/drift/alerts", response_model=Page[dict[str, Any]], tags=["drift"])
def drift_alerts(page: Paging = Depends(paging)) -> dict[str, Any]:
    return _empty(page, "drift alerts arrive with the telemetry/drift issue; this list is empty until then")


# /v1/rollouts is served by cloud_hub/rollouts/routes.py (the OTA issue).
