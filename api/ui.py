"""``/ui``: the operators' dashboard, plain HTML, CSS and JS modules from ``api/static/ui/``.

The page holds no data of its own: its scripts call the JSON API with the bearer token the
operator pastes (kept in ``sessionStorage``), so what it shows and may change is exactly what
the API allows that token. Every response here carries a strict Content-Security-Policy (no
inline script or style, nothing from another origin, no framing): the page writes all data as
text, and the policy is what holds if some day it did not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Scope

DIRECTORY = Path(__file__).parent / "static" / "ui"
PAGE_PATH = "/ui"
ASSETS_PATH = "/ui/assets"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
"""``require-trusted-types-for``: a browser that knows it refuses any string given to
``innerHTML`` and its kin, so a slip in the page's scripts is an error, not an injection."""

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

router = APIRouter(include_in_schema=False)


class _Assets(StaticFiles):
    """The page's scripts and stylesheet: revalidated by ETag (``no-cache``), under the page's
    headers; no directory listing, no ``index.html`` (the page itself is ``/ui``)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        if os.path.basename(path) == "index.html":
            raise HTTPException(status_code=404, detail="Not Found")
        return await super().get_response(path, scope)


ASSETS = _Assets(directory=DIRECTORY)


@router.get(PAGE_PATH)
async def dashboard() -> FileResponse:
    """The dashboard's one page; its views are chosen by the query string, in the browser."""
    return FileResponse(
        DIRECTORY / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**HEADERS, "Cache-Control": "no-cache"},
    )


@router.get("/docs-assets/ui/{name:path}")
async def not_under_docs_assets(name: str) -> None:
    """``/docs-assets`` serves the whole of ``api/static/`` for Swagger UI and ReDoc; the
    dashboard's files are only served here, under its headers (a copy of the page without its
    Content-Security-Policy and ``frame-ancestors`` could be framed)."""
    raise HTTPException(status_code=404, detail="Not Found")
