"""``/docs`` (Swagger UI) and ``/redoc``, with their scripts served from the package.

FastAPI's own pages load them from a CDN (and ReDoc its fonts from Google): blank on a closed
network, and a third party sees who reads the API's documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class _Page:
    """A documentation page: its title, FastAPI's function that writes it, the ``static/``
    files it loads (argument name: path), and its other options."""

    name: str
    render: Callable[..., HTMLResponse]
    assets: dict[str, str]
    options: dict[str, Any]

    def answer(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = self.render(
            openapi_url=root + (request.app.openapi_url or ""),
            title=f"{request.app.title} — {self.name}",
            **{arg: f"{root}{ASSETS_PATH}/{path}" for arg, path in self.assets.items()},
            **self.options,
        )
        page.headers.update(FRAMING)
        return page


_FAVICON = "swagger-ui/favicon-32x32.png"
SWAGGER_UI = _Page(
    "Swagger UI",
    get_swagger_ui_html,
    {
        "swagger_js_url": "swagger-ui/swagger-ui-bundle.js",
        "swagger_css_url": "swagger-ui/swagger-ui.css",
        "swagger_favicon_url": _FAVICON,
    },
    # No badge asking validator.swagger.io about the document.
    {"swagger_ui_parameters": {"validatorUrl": None}},
)
REDOC = _Page(
    "ReDoc",
    get_redoc_html,
    {"redoc_js_url": "redoc/redoc.standalone.js", "redoc_favicon_url": _FAVICON},
    {"with_google_fonts": False},
)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return SWAGGER_UI.answer(request)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return REDOC.answer(request)
