"""The operator's web page at ``/`` and the API docs at ``/docs``, both served from this machine.

Nothing here needs the network: the page is plain HTML, CSS and ES modules under ``api/static`` (no
build step), and ``/docs`` uses the Swagger UI bundle shipped inside the ``fastapi-offline`` wheel
instead of FastAPI's default CDN links, which leave it blank on a machine offline. (ReDoc is not
served: its page fetches a logo from its vendor's CDN whatever its options.) Both stay public: the
page asks for an API key and sends it as a Bearer header on every API call itself.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
STATIC_URL, DOCS_ASSETS_URL = "/static", "/docs-assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

PAGE_CSP = "; ".join((
    "default-src 'self'", "img-src 'self' blob: data:", "style-src 'self'", "script-src 'self'",
    "connect-src 'self' blob:", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
))
"""The page loads and talks to this origin only: a CDN link or an injected inline script cannot run."""

SWAGGER_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True, "tryItOutEnabled": False}
"""``validatorUrl: null``: Swagger UI otherwise asks an outside validator about any non-localhost spec."""

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    """The web page: streams, questions with live answers, history, alerts, memory timeline."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={
        "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
    })


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json`` with its JavaScript and CSS from this server."""
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API docs",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC_URL}/favicon.svg",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}", swagger_ui_parameters=SWAGGER_PARAMETERS,
    )


@router.get(OAUTH2_REDIRECT_URL)
def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect helper (inline script only, nothing fetched)."""
    return get_swagger_ui_oauth2_redirect_html()


def install(app: FastAPI) -> None:
    """Serve the page, its assets and the docs; build the app with ``docs_url=None, redoc_url=None``."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="static")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
