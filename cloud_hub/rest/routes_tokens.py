"""Token administration over REST (admin scope); the first admin token comes from the CLI."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, Hub, get_hub, require
from tandem.cloud_hub.rest.schemas import ErrorBody, NewTokenOut, TokenIn, TokenOut

router = APIRouter(
    prefix="/v1/tokens", tags=["tokens"], responses=AUTH_RESPONSES, dependencies=[Depends(require("admin"))]
)


@router.get("", response_model=list[TokenOut])
def list_tokens(include_revoked: bool = Query(True), hub: Hub = Depends(get_hub)) -> list[dict[str, Any]]:
    return [t.to_dict() for t in hub.tokens.list(include_revoked)]


@router.post(
    "",
    response_model=NewTokenOut,
    status_code=201,
    responses={422: {"model": ErrorBody, "description": "bad name or scope"}},
)
def create_token(body: TokenIn, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Create a token; the secret is in this response only."""
    new = hub.tokens.create(body.name, body.scope, body.device_id)
    return {**new.info.to_dict(), "token": new.token}


@router.delete(
    "/{token_id}", response_model=TokenOut, responses={404: {"model": ErrorBody, "description": "no such token"}}
)
def revoke_token(token_id: str, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Revoke a token; requests with it get 401 from now on."""
    return hub.tokens.revoke(token_id).to_dict()
