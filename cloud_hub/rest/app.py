"""The REST console's FastAPI app: routers, error mapping, OpenAPI at /docs and /redoc (assets served locally)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi_offline import FastAPIOffline

from tandem.cloud_hub.errors import AuthError, HubError
from tandem.cloud_hub.inference import rest as inference_rest
from tandem.cloud_hub.rest import (
    routes_artifacts,
    routes_devices,
    routes_hard_examples,
    routes_metrics,
    routes_models,
    routes_system,
    routes_tokens,
    routes_whoami,
)
from tandem.cloud_hub.rest.schemas import ErrorBody
from tandem.cloud_hub.rollouts import routes as rollout_routes
from tandem.cloud_hub.telemetry import routes as telemetry_routes
from tandem.cloud_hub.web import mount_console

log = logging.getLogger(__name__)

API_VERSION = "1"
DOCS_ASSETS_URL = "/docs-assets"  # Swagger UI and ReDoc files (the fastapi-offline package)
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "telemetry, rollouts or hard examples are not running on this hub"}
}


def create_app(hub: Any) -> FastAPI:
    """Build the app for `hub` (anything with db, registry, devices, tokens, artifacts, key, config, urls())."""
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the hub itself (DOCS_ASSETS_URL), not a
    # CDN, so they work on a hub without Internet access.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_URL,
        title="Tandem hub",
        version=API_VERSION,
        description="Fleet console: devices, models, variants, artifacts, telemetry, drift alerts, OTA rollouts. "
        "Every route but /healthz needs a bearer token "
        "(scopes read < operate < admin) from `tandem-hub tokens create`.",
    )
    app.state.hub = hub

    @app.exception_handler(HubError)
    async def hub_error(request: Request, exc: HubError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if exc.status >= 500:
            log.error("request failed path=%s error=%s", request.url.path, exc)
        return JSONResponse(error_body(request, str(exc)), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One error shape everywhere ({"detail": str}), so clients and the CLI print it as is.
        return JSONResponse(error_body(request, describe_validation_errors(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not is_v2(request.url.path):
            return await http_exception_handler(request, exc)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such Open Inference Protocol endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = (
                f"{request.method} is not allowed on {request.url.path} (allowed: {(exc.headers or {}).get('Allow')})"
            )
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    for module in (routes_system, routes_devices, routes_models, routes_artifacts, routes_tokens, routes_whoami):
        app.include_router(module.router)
    app.include_router(inference_rest.router)  # Open Inference Protocol (v2) REST beside the gRPC service
    app.include_router(routes_metrics.router)
    for module in (telemetry_routes, rollout_routes, routes_hard_examples):  # 503 while that part is not running
        app.include_router(module.router, responses=_UNAVAILABLE)
    mount_console(app)
    from tandem.cloud_hub.rest.body_limit import BodyLimitMiddleware
    from tandem.protocols.limits import DEFAULT_MAX_JSON_BODY_BYTES

    app.add_middleware(
        BodyLimitMiddleware,
        max_json_body_bytes=getattr(
            getattr(getattr(hub, "config", None), "http", None), "max_json_body_bytes", DEFAULT_MAX_JSON_BODY_BYTES
        ),
    )
    return app


def is_v2(path: str) -> bool:
    """An Open Inference Protocol path, whose errors are v2's {"error": ...} (tritonclient reads that key)."""
    return path == "/v2" or path.startswith("/v2/")


def error_body(request: Request, message: str) -> dict[str, str]:
    """The console's {"detail": ...}, or v2's {"error": ...} under /v2."""
    return {"error": message} if is_v2(request.url.path) else {"detail": message}


def describe_validation_errors(errors: Any) -> str:
    """'query.limit: Input should be ...; body.device_id: Field required'."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
