"""GET /metrics: Prometheus text or OpenMetrics (by the Accept header); needs a `read` token."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tandem.cloud_hub.metrics import hub_families
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, get_hub, require
from tandem.protocols.prom import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, render, wants_openmetrics

router = APIRouter()

_TEXT = {"schema": {"type": "string", "description": "Prometheus exposition"}}


@router.get(
    "/metrics",
    tags=["system"],
    response_class=Response,
    dependencies=[Depends(require("read", False))],
    responses={
        200: {
            "description": "the hub's metrics",
            "content": {"text/plain": _TEXT, "application/openmetrics-text": _TEXT},
        },
        **AUTH_RESPONSES,
    },
)
def metrics(request: Request, hub: Hub = Depends(get_hub)) -> Response:
    """Inference, telemetry, devices, rollouts and drift alerts for Prometheus (scrape with a bearer token)."""
    openmetrics = wants_openmetrics(request.headers.get("accept"))
    body = render(hub_families(hub), openmetrics=openmetrics)
    return Response(body, media_type=OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)
