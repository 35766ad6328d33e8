"""Models, their immutable versions, signed manifests and variants; upload as a .tar.gz."""

from __future__ import annotations

import logging
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tandem.cloud_hub.errors import InvalidInputError
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, Paging, get_hub, paging, require
from tandem.cloud_hub.rest.device_access import check_device_may_fetch
from tandem.cloud_hub.rest.schemas import ErrorBody, ModelSummary, ModelVersionOut, Page, RegisterOut, VariantOut
from tandem.cloud_hub.rest.schemas_manifest import ManifestDoc

log = logging.getLogger(__name__)

router = APIRouter(tags=["models"], responses=AUTH_RESPONSES)
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such model or version"}}
MAX_MEMBERS = 10_000
EXPANSION_LIMIT = 2  # unpacked bytes may be at most this many times http.max_upload_mb
MAX_EXPANSION_RATIO = 100  # ... and this many times the compressed upload
RATIO_FLOOR_BYTES = 64 * 1024 * 1024  # the ratio bound never goes below this (tiny uploads of sparse files)
UPLOAD_TYPES = ("application/gzip", "application/x-gzip", "application/x-tar", "application/octet-stream")


@router.get("/v1/models", response_model=Page[ModelSummary], dependencies=[Depends(require("read"))])
def list_models(
    name: str | None = Query(None, max_length=128), page: Paging = Depends(paging), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    items, total = hub.registry.list_models(name, page.limit, page.offset)
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


@router.post(
    "/v1/models",
    response_model=RegisterOut,
    status_code=201,
    dependencies=[Depends(require("operate"))],
    responses={
        200: {"model": RegisterOut, "description": "this exact version was already registered"},
        409: {"model": ErrorBody, "description": "this name+version exists with other content"},
        413: {"model": ErrorBody, "description": "upload too large"},
        422: {"model": ErrorBody, "description": "not a valid compiled model archive"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "a .tar.gz of a tandem-compile output directory",
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in UPLOAD_TYPES},
        }
    },
)
async def upload_model(request: Request, response: Response, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Register a compiled model sent as a tar archive (gzip optional); versions are immutable."""
    limit = int(hub.config.http.max_upload_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(dir=hub.config.data_dir, prefix="upload-") as tmp:
        archive = Path(tmp) / "model.tar"
        size = 0
        with open(archive, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _TooLarge(f"upload exceeds http.max_upload_mb={hub.config.http.max_upload_mb:g}")
                fh.write(chunk)
        result = await run_in_threadpool(_register_archive, hub, archive, Path(tmp) / "model", limit * EXPANSION_LIMIT)
    if not result.created:
        response.status_code = 200
    return {
        "name": result.name,
        "version": result.version,
        "created": result.created,
        "content_sha256": result.content_sha256,
    }


class _TooLarge(InvalidInputError):
    status = 413


def _register_archive(hub: Any, archive: Path, dest: Path, max_unpacked: float) -> Any:
    dest.mkdir()
    compressed = archive.stat().st_size
    # The ratio bound: a compiled model (weights, JSON, npz) gzips by a few times at most; a bomb by thousands.
    max_unpacked = min(max_unpacked, max(RATIO_FLOOR_BYTES, compressed * MAX_EXPANSION_RATIO))
    try:
        # Streaming mode ('r|*'): each header is read, checked and its member extracted before the next is
        # decompressed, so a bomb is refused at its first oversized header with nothing big written.
        with tarfile.open(archive, "r|*") as tar:
            count = unpacked = 0
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise InvalidInputError(
                        f"archive has more than {MAX_MEMBERS} entries; a compiled model has far fewer"
                    )
                if not (member.isfile() or member.isdir()):
                    raise InvalidInputError(f"archive member {member.name!r}: only files and directories are accepted")
                unpacked += member.size
                if unpacked > max_unpacked:  # a small gzip can hide a huge tar
                    raise _TooLarge(
                        f"archive unpacks to more than {int(max_unpacked)} bytes ({compressed} compressed; "
                        f"limits: {EXPANSION_LIMIT}x http.max_upload_mb, {MAX_EXPANSION_RATIO}x the upload)"
                    )
                tar.extract(member, dest, filter="data")  # refuses absolute paths and '..'
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise InvalidInputError(f"not a readable tar(.gz) archive of a compiled model directory ({exc})") from exc
    root = dest
    if not (root / "manifest.json").is_file():
        children = [p for p in dest.iterdir() if p.is_dir()]
        if len(children) == 1 and (children[0] / "manifest.json").is_file():
            root = children[0]
    try:
        return hub.registry.register_dir(root)
    except InvalidInputError as exc:
        # Name files as the uploader knows them, not by this hub's temp path.
        raise InvalidInputError(str(exc).replace(f"{root}/", "").replace(str(root), "<upload>")) from exc


@router.get(
    "/v1/models/{name}/versions",
    response_model=Page[ModelVersionOut],
    responses=_404,
    dependencies=[Depends(require("read"))],
)
def list_versions(name: str, page: Paging = Depends(paging), hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    items, total = hub.registry.list_versions(name, page.limit, page.offset)
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


@router.get(
    "/v1/models/{name}/versions/{version}",
    response_model=ModelVersionOut,
    responses=_404,
    dependencies=[Depends(require("read"))],
)
def get_version(name: str, version: str, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    return hub.registry.get_version(name, version)


@router.get(
    "/v1/models/{name}/versions/{version}/manifest",
    response_model=None,
    responses={200: {"model": ManifestDoc, "description": "the signed manifest, as stored"}, **_404},
    dependencies=[Depends(require("device", rate_limited=False))],
)
def get_manifest(name: str, version: str, request: Request, hub: Hub = Depends(get_hub)) -> JSONResponse:
    """The manifest signed by this hub's release key (verify with GET /v1/keys/release). Sent as stored,
    never through a response model: its signatures cover every field. A device's token gets only
    versions rolled out to its device."""
    check_device_may_fetch(hub, request.state.token, [(name, version)], f"{name} {version}")
    return JSONResponse(hub.registry.manifest(name, version))


@router.get("/v1/variants", response_model=Page[VariantOut], dependencies=[Depends(require("read"))])
def list_variants(
    model: str | None = Query(None, max_length=128),
    version: str | None = Query(None, max_length=32),
    profile: str | None = Query(None, max_length=64),
    runtime: str | None = Query(None, max_length=32),
    precision: str | None = Query(None, max_length=16),
    page: Paging = Depends(paging),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    items, total = hub.registry.list_variants(model, version, profile, runtime, precision, page.limit, page.offset)
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}
