"""REST for the hard examples agents upload: a paged list, and one example's tensors as .npz.

The routes find the running HardExampleIngest at `app.state.hub.hard_examples` and answer
503 while it is not running (no MQTT 5 broker, or telemetry turned off).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from tandem.cloud_hub.errors import ServiceUnavailableError
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Paging, paging, require
from tandem.cloud_hub.rest.schemas import HardExampleOut, Page

router = APIRouter(responses=AUTH_RESPONSES, dependencies=[Depends(require("read"))], tags=["hard examples"])


def get_hard_examples(request: Request) -> Any:
    service = getattr(getattr(request.app.state, "hub", None), "hard_examples", None)
    if service is None or service.store is None:
        raise ServiceUnavailableError(
            "hard-example ingestion is not running on this hub (it needs an MQTT 5 broker and telemetry on)"
        )
    return service


@router.get("/v1/hard-examples", response_model=Page[HardExampleOut], response_model_exclude_unset=True)
def list_hard_examples(
    device_id: str | None = Query(None, max_length=128),
    model: str | None = Query(None, max_length=256),
    version: str | None = Query(None, max_length=256),
    page: Paging = Depends(paging),
    service: Any = Depends(get_hard_examples),
) -> dict[str, Any]:
    """Stored hard examples, newest first: header fields and tensor names, dtypes and shapes (no bytes)."""
    items, total = service.store.list(device_id, model, version, page.limit, page.offset)
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


@router.get(
    "/v1/hard-examples/{device_id}/{example_id}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the inputs as .npz (np.load(f, allow_pickle=False))",
        },
        404: {"description": "no such example (or it aged out)"},
    },
)
def get_hard_example(
    device_id: str = Path(..., max_length=128),
    example_id: int = Path(..., ge=0, le=2**63 - 1),
    service: Any = Depends(get_hard_examples),
) -> Response:
    """One example's input tensors as an .npz file."""
    data = service.store.npz(device_id, example_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="hard-example-{example_id}.npz"'},
    )
