"""The fleet console: a static web page at /console over the hub's own REST API.

Plain HTML, ES modules and CSS under static/ (no build step, nothing fetched from
elsewhere); the page keeps its bearer token in sessionStorage and polls the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
CONSOLE_PATH = "/console"

# Everything the page renders comes from the API; a CSP that allows only our own files is
# the second line of defence behind rendering with textContent.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag), so a hub upgrade serves the new page at once
}


class _ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Any:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_console(app: FastAPI) -> None:
    """Serve the page at /console/ and its JSON helpers under /v1/console."""
    from tandem.cloud_hub.web.routes import router

    @app.get(CONSOLE_PATH, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(CONSOLE_PATH + "/")

    app.include_router(router)
    app.mount(CONSOLE_PATH, _ConsoleFiles(directory=STATIC_DIR, html=True), name="console")


__all__ = ["CONSOLE_PATH", "STATIC_DIR", "mount_console"]
