"""Who the bearer token is: the console asks once after login to show only what the scope allows."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from tandem.cloud_hub.auth import SCOPES, TokenInfo, scope_allows
from tandem.cloud_hub.rest.deps import AUTH_RESPONSES, require

router = APIRouter(prefix="/v1/auth", tags=["tokens"], responses=AUTH_RESPONSES)


class WhoAmI(BaseModel):
    token_id: str
    name: str
    scope: str
    allows: list[str]


@router.get("/whoami", response_model=WhoAmI)
def whoami(token: TokenInfo = Depends(require("device"))) -> WhoAmI:
    """The calling token's id, name and scope, and every scope it allows (any valid token may ask)."""
    return WhoAmI(
        token_id=token.token_id,
        name=token.name,
        scope=token.scope,
        allows=[s for s in SCOPES if scope_allows(token.scope, s)],
    )
