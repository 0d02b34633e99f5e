"""``/docs`` (Swagger UI) and ``/redoc``, with their scripts served from the package.

FastAPI's own pages load them from a CDN (and ReDoc its fonts from Google): blank on a closed
network, and a third party sees who reads the API's documentation.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
ASSETS = StaticFiles(directory=Path(__file__).parent / "static")

router = APIRouter(include_in_schema=False)

FRAMING = {
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
}
"""Neither page may be framed: its Authorize dialog takes a token, and a page that frames it
could overlay it (clickjacking). ``X-Frame-Options`` for browsers without CSP level 2. No
``script-src``: both pages start with an inline script."""


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_PATH}/{name}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.scope.get("root_path", "") + (request.app.openapi_url or ""),
        title=f"{request.app.title} — Swagger UI",
        swagger_js_url=_asset(request, "swagger-ui/swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui/swagger-ui.css"),
        swagger_favicon_url=_asset(request, "swagger-ui/favicon-32x32.png"),
        # No badge asking validator.swagger.io about the document.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers.update(FRAMING)
    return page


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=request.scope.get("root_path", "") + (request.app.openapi_url or ""),
        title=f"{request.app.title} — ReDoc",
        redoc_js_url=_asset(request, "redoc/redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "swagger-ui/favicon-32x32.png"),
        with_google_fonts=False,
    )
    page.headers.update(FRAMING)
    return page
