"""Shared route dependencies: the hub behind the app, scope checks, pagination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud_hub.auth import TokenInfo
from cloud_hub.rest.schemas import ErrorBody

MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000

_bearer = HTTPBearer(auto_error=False, description="a token from `tandem-hub tokens create`")

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, invalid or revoked token"},
    403: {"model": ErrorBody, "description": "the token's scope does not allow this"},
    422: {"model": ErrorBody, "description": "invalid parameters or body; `detail` names the field"},
}


def get_hub(request: Request) -> Any:
    return request.app.state.hub


def require(scope: str) -> Callable[..., TokenInfo]:
    """A dependency that authenticates the bearer token and checks it allows `scope`."""

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> TokenInfo:
        token = credentials.credentials if credentials is not None else None
        info = request.app.state.hub.tokens.authorize(token, scope)
        request.state.token = info
        return info

    check.__name__ = f"require_{scope}"
    return check


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(
    limit: int = Query(50, ge=1, le=MAX_LIMIT, description="page size"),
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description="items to skip"),
) -> Paging:
    return Paging(limit, offset)
