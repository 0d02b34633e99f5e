"""ASGI middleware: the request id (response header and log context), request latency, the
security headers, and the answer to an error no handler took."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus.observability import metrics
from bus.observability.logs import log_context

_REQUEST_ID = b"x-request-id"
UNMATCHED_ROUTE = "unmatched"


class _HttpMiddleware:
    """A pure ASGI middleware for HTTP requests (:meth:`http`); other scopes (the lifespan)
    pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestIdMiddleware(_HttpMiddleware):
    """Takes the caller's X-Request-ID (or makes one), returns it on the response and puts it
    in the log context of everything the request does (the route's thread included)."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope["headers"]).get(_REQUEST_ID, b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((_REQUEST_ID, request_id.encode()))
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class HttpMetricsMiddleware(_HttpMiddleware):
    """``eventbus_http_request_duration_seconds`` by method, route template and status.

    The route is the matched template (``/system/events/{event_id}``), never the raw path, so
    the label stays bounded; requests no route matched share ``unmatched``. An exception that
    escapes the app counts as the 500 the server then answers.
    """

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            metrics.observe_http(scope["method"], route, status, time.perf_counter() - started)


class SecurityHeadersMiddleware(_HttpMiddleware):
    """``X-Content-Type-Options: nosniff`` on every response, and ``Cache-Control: no-store``
    (events and tokens must not sit in a shared cache) unless the response set its own; the
    documentation's assets are only revalidated (``no-cache``: their ETag answers 304)."""

    def __init__(self, app: ASGIApp, assets_path: str) -> None:
        super().__init__(app)
        self.assets_path = assets_path

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        cache = b"no-cache" if scope["path"].startswith(self.assets_path) else b"no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.append((b"x-content-type-options", b"nosniff"))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", cache))
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnexpectedErrorMiddleware(_HttpMiddleware):
    """Answers an exception that no handler took (a bug, a database fault) with ``answer``'s
    response, from inside the other middlewares, so a 500 carries ``X-Request-ID`` and the
    security headers like any other answer, and the connection stays open.

    Starlette's own catch-all (``ServerErrorMiddleware``) sits outside every middleware: its
    500 went out without their headers, and it raised again, so the server also closed the
    connection. Added first, this one is the innermost; once a response has started, only
    closing the connection can tell the client, so the exception goes on.
    """

    def __init__(
        self, app: ASGIApp, answer: Callable[[Request, Exception], Awaitable[Response]]
    ) -> None:
        super().__init__(app)
        self.answer = answer

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            response = await self.answer(Request(scope), exc)
            await response(scope, receive, send)
