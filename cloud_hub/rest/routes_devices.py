"""Devices: agents register and heartbeat (operate); operators list and inspect (read)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from tandem.cloud_hub.devices import TAG_KEY_RE, DeviceFilter
from tandem.cloud_hub.errors import InvalidInputError
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, Paging, get_hub, paging, require
from tandem.cloud_hub.rest.schemas import DeviceIn, DeviceOut, ErrorBody, HeartbeatIn, Page

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=AUTH_RESPONSES)
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such device"}}
_422: dict[int | str, dict[str, Any]] = {422: {"model": ErrorBody, "description": "invalid device fields"}}


def parse_tag_filters(tags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not TAG_KEY_RE.match(key):
            raise InvalidInputError(f"tag filter {item!r}: expected key=value, e.g. tag=site=lyon")
        out[key] = value
    return out


@router.get("", response_model=Page[DeviceOut], dependencies=[Depends(require("read"))])
def list_devices(
    status: Literal["online", "offline"] | None = Query(None),
    profile: str | None = Query(None, max_length=64),
    model_name: str | None = Query(None, max_length=128),
    model_version: str | None = Query(None, max_length=32),
    tag: list[str] = Query([], description="key=value; repeat to require several tags"),
    page: Paging = Depends(paging),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    filt = DeviceFilter(
        status=status, profile=profile, model_name=model_name, model_version=model_version, tags=parse_tag_filters(tag)
    )
    records, total = hub.devices.list(filt, page.limit, page.offset)
    return {"items": [r.to_dict() for r in records], "total": total, "limit": page.limit, "offset": page.offset}


@router.post(
    "",
    response_model=DeviceOut,
    status_code=201,
    dependencies=[Depends(require("operate"))],
    responses={**_422, 200: {"model": DeviceOut, "description": "an existing device, updated"}},
)
def register_device(body: DeviceIn, response: Response, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Create (201) or update (200) a device; agents call this on every start."""
    existed = hub.devices.exists(body.device_id)
    record = hub.devices.register(
        body.device_id, body.profile, body.agent_version, body.tags, body.model_name, body.model_version
    )
    if existed:
        response.status_code = 200
    return record.to_dict()


@router.get("/{device_id}", response_model=DeviceOut, responses=_404, dependencies=[Depends(require("read"))])
def get_device(device_id: str, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    return hub.devices.get(device_id).to_dict()


@router.post(
    "/{device_id}/heartbeat", response_model=DeviceOut, responses=_404, dependencies=[Depends(require("operate"))]
)
def heartbeat(device_id: str, body: HeartbeatIn | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    body = body or HeartbeatIn()
    return hub.devices.heartbeat(device_id, body.model_name, body.model_version, body.agent_version).to_dict()


@router.delete(
    "/{device_id}", status_code=204, response_class=Response, responses=_404, dependencies=[Depends(require("operate"))]
)
def delete_device(device_id: str, hub: Hub = Depends(get_hub)) -> Response:
    hub.devices.delete(device_id)
    return Response(status_code=204)
