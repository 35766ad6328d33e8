"""The Open Inference Protocol (KServe v2) over REST on the hub's HTTP port.

Same models, limits and answers as the gRPC service: every route calls the one
InferenceServicer (its `answer` core, its `resolve`, its descriptions). Health needs
no token (load balancers and Kubernetes probes); the rest needs a `read` token, and
inference is not metered per token (its own queue bounds it, as on gRPC). Errors are
v2's `{"error": message}` with the HTTP status for the gRPC code the servicer chose.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import grpc
from fastapi import APIRouter, Depends, Request
from fastapi import Path as FastPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from tandem.cloud_hub.inference import describe, unsupported
from tandem.cloud_hub.inference.rest_codec import (
    HEADER_LENGTH,
    RestBodyError,
    UnsupportedEncodingError,
    decode_content,
    encode_infer_response,
    header_length,
    parse_infer_body,
)
from tandem.cloud_hub.inference.servicer import RpcFailure, InferenceServicer
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, require
from tandem.protocols.limits import MAX_GRPC_MESSAGE_BYTES
from tandem.protocols.tensor_codec import TensorCodecError

router = APIRouter(prefix="/v2", tags=["inference (v2)"])

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
MAX_BODY_BYTES = MAX_GRPC_MESSAGE_BYTES  # the same bound as a gRPC message


class V2Error(BaseModel):
    error: str = Field(description="what is wrong, naming the tensor or model")


class LiveOut(BaseModel):
    live: bool


class ReadyOut(BaseModel):
    ready: bool


class ModelReadyOut(BaseModel):
    name: str
    ready: bool


class ServerMetadataOut(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadataOut(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable-size axis")


class ModelMetadataOut(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadataOut]
    outputs: list[TensorMetadataOut]


class ConfigTensorOut(BaseModel):
    name: str
    data_type: str = Field(description="Triton's TYPE_* name")
    dims: list[int] = Field(default_factory=list)


class DynamicBatchingOut(BaseModel):
    preferred_batch_size: list[int] = Field(default_factory=list)
    max_queue_delay_microseconds: int = 0


class ModelConfigOut(BaseModel):
    name: str
    platform: str
    backend: str
    max_batch_size: int = 0
    input: list[ConfigTensorOut]
    output: list[ConfigTensorOut]
    dynamic_batching: DynamicBatchingOut | None = None


class DurationOut(BaseModel):
    count: int = 0
    ns: int = 0


class InferStatsOut(BaseModel):
    success: DurationOut = Field(default_factory=DurationOut)
    fail: DurationOut = Field(default_factory=DurationOut)
    queue: DurationOut = Field(default_factory=DurationOut)
    compute_input: DurationOut = Field(default_factory=DurationOut)
    compute_infer: DurationOut = Field(default_factory=DurationOut)
    compute_output: DurationOut = Field(default_factory=DurationOut)


class BatchStatsOut(BaseModel):
    batch_size: int
    compute_infer: DurationOut = Field(default_factory=DurationOut)


class ModelStatsOut(BaseModel):
    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    inference_stats: InferStatsOut = Field(default_factory=InferStatsOut)
    batch_stats: list[BatchStatsOut] = Field(default_factory=list)


class StatisticsOut(BaseModel):
    model_stats: list[ModelStatsOut]


class RepositoryModelOut(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class InferTensorOut(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | int | bool | str] | None = Field(None, description="flattened row-major values (JSON form)")
    parameters: dict[str, int] | None = Field(None, description="binary_data_size when the tensor follows the JSON")


class InferResponseOut(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, str | int | float | bool] | None = None
    outputs: list[InferTensorOut]


_V2_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error, "description": "malformed request; the message names the tensor"},
    404: {"model": V2Error, "description": "no such model or version"},
    **{code: spec | {"model": V2Error} for code, spec in AUTH_RESPONSES.items() if code in (401, 403, 422)},
}
_READ = [Depends(require("read"))]
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "additionalProperties": {"type": ["string", "number", "boolean"]},
                        },
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "datatype", "shape"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "datatype": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "parameters": {"type": "object"},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "binary tensor data extension: the JSON header (Inference-Header-Content-Length "
                    "bytes), then each binary input's bytes in order",
                }
            },
        },
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferResponseOut,
        "description": "the answer; with binary outputs the body is the JSON header "
        "(Inference-Header-Content-Length bytes) followed by the tensors",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **_V2_ERRORS,
    429: {"model": V2Error, "description": "the model's queue is full; retry after `Retry-After` seconds"},
    503: {"model": V2Error, "description": "no models are served, or the hub is stopping"},
    504: {"model": V2Error, "description": "the model did not answer within the request's timeout"},
}


def _servicer(request: Request) -> InferenceServicer:
    hub = request.app.state.hub
    server = getattr(hub, "inference", None) or getattr(hub, "_inference", None)
    servicer = getattr(server, "servicer", None)
    if servicer is None:
        raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "this hub serves no models (start it with models.dirs)")
    return servicer


def error_response(failure: RpcFailure) -> JSONResponse:
    headers = None
    if failure.retry_after_ms is not None:
        headers = {"Retry-After": str(max(1, math.ceil(failure.retry_after_ms / 1000)))}
    return JSONResponse({"error": failure.message}, status_code=HTTP_STATUS.get(failure.code, 500), headers=headers)


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except RpcFailure as failure:
        return error_response(failure)


@router.get("/health/live", response_model=LiveOut, responses={503: {"model": V2Error}})
def live(request: Request) -> Any:
    """Liveness: the HTTP server answers (no token)."""
    return LiveOut(live=True)


@router.get("/health/ready", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
def ready(request: Request) -> Any:
    """Readiness: models are loaded and served (503 otherwise; no token)."""
    try:
        servicer = _servicer(request)
    except RpcFailure:
        return JSONResponse({"ready": False}, status_code=503)
    ok = servicer.ready and bool(servicer.models)
    return ReadyOut(ready=True) if ok else JSONResponse({"ready": False}, status_code=503)


@router.get("", response_model=ServerMetadataOut, responses=_V2_ERRORS, dependencies=_READ)
def server_metadata(request: Request) -> Any:
    def run() -> ServerMetadataOut:
        servicer = _servicer(request)
        meta = servicer.server_metadata()
        return ServerMetadataOut(name=meta.name, version=meta.version, extensions=list(meta.extensions))

    return _call(run)


@router.get("/models/stats", response_model=StatisticsOut, responses=_V2_ERRORS, dependencies=_READ)
def all_statistics(request: Request) -> Any:
    return _call(lambda: describe.to_json(_servicer(request).statistics()) or {"model_stats": []})


@router.post("/repository/index", response_model=list[RepositoryModelOut], responses=_V2_ERRORS, dependencies=_READ)
def repository_index(request: Request) -> Any:
    """Read-only: the models this hub serves."""

    def run() -> list[dict[str, Any]]:
        servicer = _servicer(request)
        index = describe.repository_index(servicer.models.values(), servicer.ready)
        return [describe.to_json(m) | {"state": m.state} for m in index.models]

    return _call(run)


def _version_path(version: str = FastPath(description="semver (1.2.0) or its integer major (1)")) -> str:
    return version


def _model_path(model: str = FastPath(description="model name or alias")) -> str:
    return model


def _register(path: str, versioned: bool) -> None:
    """One set of model routes per path shape: /models/{m}/... and /models/{m}/versions/{v}/..."""

    def version_of(params: dict[str, str]) -> str:
        return params.get("version", "") if versioned else ""

    read_deps = [Depends(_model_path), *([Depends(_version_path)] if versioned else []), Depends(require("read"))]
    infer_deps = [
        Depends(_model_path),
        *([Depends(_version_path)] if versioned else []),
        Depends(require("read", rate_limited=False)),
    ]

    @router.get(
        path,
        response_model=ModelMetadataOut,
        responses=_V2_ERRORS,
        dependencies=read_deps,
        name=f"model_metadata{'_versioned' if versioned else ''}",
    )
    def model_metadata(request: Request) -> Any:
        def run() -> dict[str, Any]:
            p = request.path_params
            return describe.to_json(describe.model_metadata(_servicer(request).resolve(p["model"], version_of(p))))

        return _call(run)

    @router.get(
        path + "/ready",
        response_model=ModelReadyOut,
        responses={**_V2_ERRORS, 503: {"model": ModelReadyOut}},
        dependencies=read_deps,
        name=f"model_ready{'_versioned' if versioned else ''}",
    )
    def model_ready(request: Request) -> Any:
        def run() -> Any:
            p = request.path_params
            servicer = _servicer(request)
            model = servicer.resolve(p["model"], version_of(p))
            if not servicer.ready:
                return JSONResponse({"name": model.name, "ready": False}, status_code=503)
            return ModelReadyOut(name=model.name, ready=True)

        return _call(run)

    @router.get(
        path + "/config",
        response_model=ModelConfigOut,
        responses=_V2_ERRORS,
        dependencies=read_deps,
        name=f"model_config{'_versioned' if versioned else ''}",
    )
    def model_config(request: Request) -> Any:
        def run() -> dict[str, Any]:
            p = request.path_params
            return describe.to_json(describe.model_config(_servicer(request).resolve(p["model"], version_of(p))))

        return _call(run)

    @router.get(
        path + "/stats",
        response_model=StatisticsOut,
        responses=_V2_ERRORS,
        dependencies=read_deps,
        name=f"model_statistics{'_versioned' if versioned else ''}",
    )
    def model_statistics(request: Request) -> Any:
        def run() -> dict[str, Any]:
            p = request.path_params
            return describe.to_json(_servicer(request).statistics(p["model"], version_of(p)))

        return _call(run)

    @router.post(
        path + "/infer",
        response_model=InferResponseOut,
        responses=_INFER_RESPONSES,
        dependencies=infer_deps,
        openapi_extra=_INFER_BODY,
        name=f"model_infer{'_versioned' if versioned else ''}",
    )
    async def model_infer(request: Request) -> Any:
        """Inference with JSON tensors or the binary tensor data extension (what tritonclient.http sends)."""
        p = request.path_params
        try:
            servicer = _servicer(request)
            body = await _read_body(request)
            try:
                encoding = request.headers.get("content-encoding")
                if encoding:  # tritonclient.http's request_compression_algorithm: inflating is CPU work, off the loop
                    body = await run_in_threadpool(decode_content, body, encoding, MAX_BODY_BYTES)
                length = header_length(request.headers.get(HEADER_LENGTH))
                rest = parse_infer_body(body, length, p["model"], version_of(p), servicer.limits)
            except UnsupportedEncodingError as exc:
                servicer.note_failure(p["model"], RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
                return JSONResponse({"error": str(exc)}, status_code=415)
            except (RestBodyError, TensorCodecError, ValueError) as exc:
                failure = RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                servicer.note_failure(p["model"], failure)
                raise failure from None
            response = await run_in_threadpool(servicer.answer, rest.request, rest.timeout_s)
        except RpcFailure as failure:
            return error_response(failure)
        payload, json_length = encode_infer_response(response, rest)
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})


async def _read_body(request: Request) -> bytes:
    """The body, refused before reading past MAX_BODY_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"the body is {declared} bytes, at most {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_register("/models/{model}", versioned=False)
_register("/models/{model}/versions/{version}", versioned=True)

# Triton's endpoints the hub does not offer: 501 and why (not a 404 whose body a v2 client cannot parse). Left out
# of the OpenAPI document: they are not part of the API, only named refusals.
_REFUSED = {
    "/repository/models/{model}/load": "RepositoryModelLoad",
    "/repository/models/{model}/unload": "RepositoryModelUnload",
    "/systemsharedmemory/{rest:path}": "SystemSharedMemoryStatus",
    "/cudasharedmemory/{rest:path}": "CudaSharedMemoryStatus",
    "/trace/setting": "TraceSetting",
    "/models/{model}/trace/setting": "TraceSetting",
    "/logging": "LogSettings",
}


def _refusal(method: str) -> Any:
    def refuse() -> JSONResponse:
        return error_response(RpcFailure(grpc.StatusCode.UNIMPLEMENTED, unsupported.METHODS[method]))

    return refuse


for _path, _method in _REFUSED.items():
    router.add_api_route(_path, _refusal(_method), methods=["GET", "POST"], dependencies=_READ, include_in_schema=False)
