"""One place that turns every error into ``{"success": false, "message": ...}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from bus.errors import BusError

log = logging.getLogger("eventbus.api")


def envelope(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code, headers=headers)


def _bus_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BusError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return envelope(exc.status_code, exc.message, headers)


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own validation (path/query types) never reaches a client as 422 + detail.
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    return envelope(400, f"Invalid {loc[-1]}" if loc else "Invalid request")


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return envelope(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Not inside an ``except`` block: the traceback must be passed to reach the log.
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    return envelope(500, "Internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(BusError, _bus_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
