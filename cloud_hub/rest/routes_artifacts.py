"""Artifact downloads by sha256, resumable with Range; ETag is the sha256 itself."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import StreamingResponse

from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, get_hub, require
from tandem.cloud_hub.rest.device_access import check_device_may_fetch, versions_holding
from tandem.cloud_hub.rest.ranges import RangeNotSatisfiable, parse_range
from tandem.cloud_hub.rest.schemas import ErrorBody

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"], responses=AUTH_RESPONSES)

SHA_PATTERN = r"^[0-9a-f]{64}$"
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the whole file",
    },
    206: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the requested byte range",
    },
    304: {"description": "If-None-Match matched the ETag"},
    404: {"model": ErrorBody, "description": "no artifact with this sha256"},
    416: {"model": ErrorBody, "description": "the Range cannot be served"},
}


def _serve(
    sha256: str,
    request: Request,
    range_header: str | None,
    if_range: str | None,
    if_none_match: str | None,
    hub: Any,
    head: bool,
) -> Response:
    token = getattr(request.state, "token", None)
    if token is not None:  # a device's own token: only files of versions rolled out to it
        check_device_may_fetch(hub, token, versions_holding(hub, sha256), f"a version holding {sha256}")
    size = hub.artifacts.size(sha256)  # NotFoundError -> 404
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
    if if_none_match is not None and (
        if_none_match.strip() == "*" or etag in [t.strip() for t in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    # If-Range with another validator means the client's partial copy is stale: send it all.
    use_range = range_header is not None and (if_range is None or if_range.strip() == etag)
    if use_range:
        try:
            byte_range = parse_range(range_header or "", size)
        except RangeNotSatisfiable as exc:
            return Response(
                content=f'{{"detail": "{_json_safe(str(exc))}"}}',
                status_code=416,
                media_type="application/json",
                headers={**headers, "Content-Range": f"bytes */{size}"},
            )
        start, length, status = byte_range.start, byte_range.length, 206
        headers["Content-Range"] = byte_range.content_range(size)
    else:
        start, length, status = 0, size, 200
    headers["Content-Length"] = str(length)
    if head:
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    return StreamingResponse(
        hub.artifacts.open_range(sha256, start, length),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


def _json_safe(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


@router.get(
    "/{sha256}",
    response_class=Response,
    responses=_RESPONSES,
    dependencies=[Depends(require("device", rate_limited=False))],
)
def get_artifact(
    request: Request,
    sha256: str = Path(..., pattern=SHA_PATTERN, description="the file's sha256 (from a manifest)"),
    range_header: str | None = Header(None, alias="Range", max_length=200),
    if_range: str | None = Header(None, alias="If-Range", max_length=200),
    if_none_match: str | None = Header(None, alias="If-None-Match", max_length=1000),
    hub: Hub = Depends(get_hub),
) -> Response:
    """Download a stored file; `Range: bytes=N-` resumes an interrupted download."""
    return _serve(sha256, request, range_header, if_range, if_none_match, hub, head=False)


@router.head(
    "/{sha256}",
    response_class=Response,
    responses=_RESPONSES,
    dependencies=[Depends(require("device", rate_limited=False))],
)
def head_artifact(
    request: Request,
    sha256: str = Path(..., pattern=SHA_PATTERN),
    range_header: str | None = Header(None, alias="Range", max_length=200),
    if_range: str | None = Header(None, alias="If-Range", max_length=200),
    if_none_match: str | None = Header(None, alias="If-None-Match", max_length=1000),
    hub: Hub = Depends(get_hub),
) -> Response:
    """Size and ETag without the body."""
    return _serve(sha256, request, range_header, if_range, if_none_match, hub, head=True)
