"""``/docs`` and the web page load nothing from outside the server, and need no key.

These are the fast checks on the HTML and assets; tests/api/test_web_page.py renders the same pages
in Chromium inside a network namespace without any route out.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.web import STATIC

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)
IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", re.MULTILINE)


class Assets(HTMLParser):
    """Every URL an HTML page loads: script src, stylesheet and icon href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "img") and found.get("src"):
            self.urls.append(found["src"] or "")
        if tag == "link" and found.get("href"):
            self.urls.append(found["href"] or "")


def assets(html: str) -> list[str]:
    parser = Assets()
    parser.feed(html)
    return parser.urls


@pytest.fixture
def anonymous(runtime):  # type: ignore[no-untyped-def]
    """A client with no API key: the page and the docs are public."""
    with TestClient(create_app(runtime)) as client:
        yield client


def test_docs_when_opened_without_a_key_load_every_asset_from_this_server(anonymous):
    page = anonymous.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # then no CDN: FastAPI's default pages point at cdn.jsdelivr.net and fonts.googleapis.com
    assert not EXTERNAL.search(page.text), page.text
    urls = assets(page.text)
    assert urls and all(url.startswith("/") for url in urls), urls
    for url in urls:
        asset = anonymous.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert anonymous.get("/openapi.json").status_code == 200


def test_swagger_ui_when_configured_asks_no_outside_validator(anonymous):
    # Swagger UI otherwise shows a badge fetched from validator.swagger.io for any non-localhost spec
    assert '"validatorUrl": null' in anonymous.get("/docs").text
    # and ReDoc, whose page always fetches its vendor's logo from a CDN, is not served at all
    assert anonymous.get("/redoc").status_code == 404


def test_page_when_served_is_public_with_a_same_origin_policy(anonymous):
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert not EXTERNAL.search(page.text)
    # and its assets are served, public too
    urls = assets(page.text)
    assert "/static/app.css" in urls and "/static/js/main.js" in urls
    for url in urls:
        assert anonymous.get(url).status_code == 200, url
    # while tenant data still needs a key
    assert anonymous.get("/streams").status_code == 401


def test_page_modules_when_followed_import_only_local_files_that_exist(anonymous):
    """Every module reachable from main.js is served, and none imports from another origin."""
    seen, todo = set(), ["/static/js/main.js"]
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        response = anonymous.get(url)
        assert response.status_code == 200, url
        assert "javascript" in response.headers["content-type"], (url, response.headers["content-type"])
        for target in IMPORT.findall(response.text):
            assert target.startswith("./"), (url, target)
            todo.append(url.rsplit("/", 1)[0] + "/" + target[2:])
    assert seen == {f"/static/js/{p.name}" for p in (STATIC / "js").glob("*.js")}


def test_page_scripts_when_read_never_put_text_into_html():
    """Escaping by construction: the page builds DOM nodes and text nodes, never HTML strings."""
    for path in (STATIC / "js").glob("*.js"):
        source = path.read_text(encoding="utf-8")
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert forbidden not in source, (path.name, forbidden)
