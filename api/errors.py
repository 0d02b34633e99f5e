"""One place that turns every error into ``{"success": false, "message": ...}``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from api.middleware import UnexpectedErrorMiddleware
from bus.errors import BusError, DatabaseUnavailable, SchemaNotCurrent
from bus.storage.db import DATABASE_UNREACHABLE
from bus.storage.migrate import STATEMENT_REFUSED, schema_missing

log = logging.getLogger("eventbus.api")

CLIENT_CLOSED_REQUEST = 499


def envelope(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code, headers=headers)


async def _bus_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BusError)
    headers = None
    if exc.status_code == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif exc.status_code == 503:
        headers = {"Retry-After": "1"}
    return envelope(exc.status_code, exc.message, headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own validation (path/query types) never reaches a client as 422 + detail.
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    return envelope(400, f"Invalid {loc[-1]}" if loc else "Invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return envelope(exc.status_code, str(exc.detail), headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path: Starlette names only the first route's, so
    ``/system/events`` would say ``GET`` although it takes ``POST`` too.

    As in OpenAPI, a concrete path wins over a template: ``/system/events/stats`` takes GET,
    whatever ``/system/events/{event_id}`` would do with ``stats``.

    Matched on the path Starlette's router matches, not ``request.url.path``: ``urlsplit``
    drops a tab or newline from a URL, so ``…/events/%09`` would match no route there."""
    path = get_route_path(request.scope)
    concrete: set[str] = set()
    templated: set[str] = set()
    for route in _routes(request.app.router.routes):
        if route.path_regex.fullmatch(path):
            (templated if route.param_convertors else concrete).update(route.methods or ())
    return sorted(concrete or templated)


def _routes(routes: Iterable[Any]) -> Iterator[Route]:
    """The app's routes, through FastAPI's included routers (included without a prefix here:
    their routes carry their whole path)."""
    for route in routes:
        if isinstance(route, Route):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from _routes(included.routes)


async def _client_gone(request: Request, _exc: Exception) -> Response:
    # The client closed the connection before its body arrived: nobody reads this answer, and
    # it is no server error (it would feed the 5xx alert). 499 as nginx counts it.
    log.info(
        "client disconnected before its request was read",
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DATABASE_UNREACHABLE):  # raised where no handler of its own looks
        return await _database_unreachable(request, exc)
    # Not inside an ``except`` block: the traceback must be passed to reach the log.
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    return envelope(500, "Internal server error")


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # A table or column missing is a schema behind this code (`eventbus migrate` not run yet):
    # a 503 to retry, as /readyz says; logged, as a wrong statement would raise the same.
    if not schema_missing(exc):
        return await _unexpected(request, exc)
    log.error(
        "%s (%s)",
        SchemaNotCurrent.message,
        str(getattr(exc, "orig", exc)).splitlines()[0],
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    return envelope(SchemaNotCurrent.status_code, SchemaNotCurrent.message)


async def _database_unreachable(request: Request, exc: Exception) -> JSONResponse:
    # A partition, a restart, a pool whose connections all hang: retryable, never a 500. The
    # transaction did not commit, or a retry with the same Idempotency-Key finds that it did.
    log.warning(
        "%s (%s)",
        DatabaseUnavailable.message,
        str(getattr(exc, "orig", exc)).splitlines()[0] if str(exc) else type(exc).__name__,
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    return envelope(
        DatabaseUnavailable.status_code, DatabaseUnavailable.message, {"Retry-After": "1"}
    )


def install(app: FastAPI) -> None:
    """The error handlers, and the innermost middleware that answers what none of them takes
    (installed before ``create_app`` adds the others, so theirs wrap its 500)."""
    # Every handler is ``async def``: Starlette runs a sync one on the request thread pool, so
    # with that pool full (one tenant's load) even a 401 or a 503 would wait for a thread.
    app.add_exception_handler(BusError, _bus_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(STATEMENT_REFUSED, _database_error)
    for unreachable in DATABASE_UNREACHABLE:
        app.add_exception_handler(unreachable, _database_unreachable)
    app.add_exception_handler(Exception, _unexpected)  # what a middleware itself raises
    app.add_middleware(UnexpectedErrorMiddleware, answer=_unexpected)
