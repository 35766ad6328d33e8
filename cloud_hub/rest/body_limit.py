"""Request body size limits enforced before anything is parsed (pure ASGI middleware).

A declared Content-Length over the limit is answered 413 without reading a byte; a
chunked body is counted as it streams and cut off with 413 the moment it passes the
limit, so a 500 MB JSON body never reaches memory. Model uploads (POST /v1/models)
stream to disk under their own limits (routes_models.py) and are exempt here.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from tandem.protocols.limits import MAX_V2_REST_BODY_BYTES

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
UPLOAD_PATH = "/v1/models"


class BodyTooLarge(Exception):
    pass


def limit_for(method: str, path: str, json_limit: int) -> int | None:
    """The byte limit of a request's body; None: the route streams under its own limits."""
    if method == "POST" and path.rstrip("/") == UPLOAD_PATH:
        return None
    if path.startswith("/v2/"):
        return max(json_limit, MAX_V2_REST_BODY_BYTES)
    return json_limit


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_json_body_bytes: int) -> None:
        self.app = app
        self.max_json_body_bytes = int(max_json_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope.get("method", "GET"), scope.get("path", ""), self.max_json_body_bytes)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit, scope)
            return
        seen = 0
        refused = False
        started = False

        async def counted_receive() -> dict[str, Any]:
            # Past the limit: answer 413 here and tell the app the client left, so it stops reading
            # (an exception would be turned into a 400 by the framework's body parsing).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await _too_large(send, limit, scope)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; whatever the app answers to a 'disconnect' is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:  # pragma: no cover - kept for apps that raise on disconnect
            pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int, scope: Scope) -> None:
    log.warning("request body over the limit path=%s limit=%d", scope.get("path"), limit)
    key = "error" if str(scope.get("path", "")).startswith("/v2/") else "detail"  # v2 clients read "error"
    body = json.dumps({key: f"request body exceeds {limit} bytes (max_json_body_bytes)"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
