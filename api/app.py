"""The FastAPI application."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, routes
from bus.runtime import Bus
from bus.settings import Settings, get_settings

_REQUEST_ID = b"x-request-id"


class RequestIdMiddleware:
    """Takes the caller's X-Request-ID (or makes one) and returns it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(_REQUEST_ID, b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((_REQUEST_ID, request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


def _without_validation_errors(app: FastAPI) -> None:
    """Drop the 422 FastAPI documents for every route with parameters: this API never sends one
    (its errors are 400s in the envelope), so the document must not promise it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # cached on the app: cleaned once
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            models = schema.get("components", {}).get("schemas", {})
            models.pop("HTTPValidationError", None)
            models.pop("ValidationError", None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, bus: Bus | None = None) -> FastAPI:
    """An app over a bus (built from settings when not given)."""
    bus = bus or Bus(settings or get_settings())
    app = FastAPI(
        title="eventbus — System Events API",
        version="0.1.0",
        description="Publish events for other modules, list them, and report their status.",
    )
    app.state.bus = bus
    errors.install(app)
    app.include_router(routes.router)
    _without_validation_errors(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"success": True, "message": "ok"}

    app.add_middleware(RequestIdMiddleware)
    return app
