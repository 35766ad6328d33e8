"""REST: GET /v1/cluster — this replica, the lease holder and the singletons it runs (read scope)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from tandem.cloud_hub.errors import ServiceUnavailableError
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, get_hub, require

router = APIRouter(prefix="/v1/cluster", tags=["system"], responses=AUTH_RESPONSES)


class LeaseOut(BaseModel):
    name: str
    holder: str
    epoch: int
    expires_at: float
    acquired_at: float
    holder_url: str | None


class ClusterOut(BaseModel):
    replica_id: str
    leader: bool
    epoch: int | None
    singletons: list[str]
    lease: LeaseOut | None


@router.get("", response_model=ClusterOut, dependencies=[Depends(require("read"))])
def cluster_status(hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Which replica answers, whether it holds the lease, and who does (with its URL)."""
    cluster = getattr(hub, "cluster", None)
    if cluster is None:
        raise ServiceUnavailableError("this hub does not run as a replica ([cluster] enabled, --cluster)")
    status: dict[str, Any] = cluster.status()
    return status
