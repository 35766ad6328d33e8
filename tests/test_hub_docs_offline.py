"""/docs (Swagger UI) and /redoc work on a hub without Internet access: every file they load is the hub's own."""

from __future__ import annotations

import re
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from hub_process_fixtures import QUIET_FLAGS, serve_hub
from web_fixtures import browser  # noqa: F401  (a pytest fixture used by name)

# ReDoc's bundle shows a "powered by" logo from its CDN: offline it is one broken image, the page still renders.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
ASSET_RE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


def referenced_urls(html: str) -> list[str]:
    """Every src=, href= and Swagger's `url: '...'` in a page."""
    return [a or b for a, b in ASSET_RE.findall(html)]


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory) -> Iterator[str]:
    with serve_hub(
        tmp_path_factory.mktemp("docs") / "hub", "--http-port", "0", "--grpc-port", "0", *QUIET_FLAGS
    ) as urls:
        yield urls["http"].rstrip("/")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_only_the_hubs_own_files_and_each_is_served(hub_url, page):
    html = httpx.get(hub_url + page, timeout=10)
    assert html.status_code == 200
    urls = referenced_urls(html.text)
    assert any(u.endswith(".js") for u in urls), urls  # the page does load a script: the check bites
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} loads {url} from another host"
        assert url.startswith("/"), url
        got = httpx.get(hub_url + url, timeout=10)
        assert got.status_code == 200 and got.content, (url, got.status_code)


def test_swagger_ui_and_redoc_render_in_chromium_with_every_other_host_blocked(hub_url, browser):  # noqa: F811
    elsewhere: list[str] = []
    context = browser.new_context()
    page = context.new_page()

    def only_the_hub(route, request):  # an offline hub: anything not from it fails, and is noted
        if request.url.startswith(hub_url + "/"):
            route.continue_()
        else:
            elsewhere.append(request.url)
            route.abort()

    try:
        page.route("**/*", only_the_hub)
        for path, title in (("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")):
            page.goto(hub_url + path)
            page.wait_for_selector(title, timeout=30_000)
            assert "Tandem hub" in page.inner_text(title), path
        assert [u for u in elsewhere if u != REDOC_LOGO] == []
    finally:
        context.close()
