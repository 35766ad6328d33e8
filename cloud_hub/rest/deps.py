"""Shared route dependencies: the hub behind the app, scope checks with per-token rate limits, pagination."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tandem.cloud_hub.auth import TokenInfo
from tandem.cloud_hub.ratelimit import RateLimiter
from tandem.cloud_hub.rest.schemas import ErrorBody

if TYPE_CHECKING:
    from tandem.cloud_hub.hub import Hub
else:
    # FastAPI reads route annotations at run time, and importing the class here would be a cycle
    # (hub -> rest.app -> routes -> deps -> hub): routes annotate `hub: Hub`, checked by mypy only.
    Hub = Any

log = logging.getLogger(__name__)

MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000

_bearer = HTTPBearer(auto_error=False, description="a token from `tandem-hub tokens create`")

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, invalid or revoked token"},
    403: {"model": ErrorBody, "description": "the token's scope does not allow this"},
    422: {"model": ErrorBody, "description": "invalid parameters or body; `detail` names the field"},
    429: {
        "model": ErrorBody,
        "description": "this token is over its request rate; retry after `Retry-After` seconds",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    },
}
# HubConfig's defaults, for a hub object without them (tests build the app around stand-ins).
DEFAULT_REST_RATE_PER_S = 20.0
DEFAULT_REST_BURST = 60.0
_limiter_lock = threading.Lock()


def get_hub(request: Request) -> Hub:
    """The hub the app serves (`create_app(hub)`); routes take it as `hub: Hub = Depends(get_hub)`."""
    hub: Hub = request.app.state.hub
    return hub


def require(scope: str, rate_limited: bool = True) -> Callable[..., TokenInfo]:
    """A dependency that authenticates the bearer token and checks it allows `scope`.

    `rate_limited=False` is for the fleet's data plane (manifests and artifacts that a whole
    rollout wave fetches, often on one shared device token): the per-token limit protects the
    control plane, and downloads are bounded by artifact sizes and each device's retry budget.
    """

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> TokenInfo:
        token = credentials.credentials if credentials is not None else None
        info = request.app.state.hub.tokens.authorize(token, scope)
        request.state.token = info
        if not rate_limited or getattr(request.state, "rate_counted", False):  # two scope checks count once
            return info
        request.state.rate_counted = True
        wait = rest_limiter(request).take(info.token_id)
        if wait > 0:
            raise HTTPException(
                429,
                detail=f"token {info.token_id} is over its rate limit; retry in {wait:.2f} s "
                "(hub settings http.rate_per_s, http.burst)",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return info

    check.__name__ = f"require_{scope}" + ("" if rate_limited else "_unmetered")
    return check


def rest_limiter(request: Request) -> RateLimiter:
    """The app's one per-token bucket set, made on first use from the hub's config."""
    state = request.app.state
    limiter = getattr(state, "rest_limiter", None)
    if limiter is None:
        with _limiter_lock:
            limiter = getattr(state, "rest_limiter", None)
            if limiter is None:
                http = getattr(getattr(state.hub, "config", None), "http", None)  # HubConfig.http; stubs: defaults
                limiter = RateLimiter(
                    getattr(http, "rate_per_s", DEFAULT_REST_RATE_PER_S), getattr(http, "burst", DEFAULT_REST_BURST)
                )
                state.rest_limiter = limiter
                log.info("REST rate limit per token rate_per_s=%s burst=%s", limiter.rate, limiter.burst)
    return limiter


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(
    limit: int = Query(50, ge=1, le=MAX_LIMIT, description="page size"),
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description="items to skip"),
) -> Paging:
    return Paging(limit, offset)
