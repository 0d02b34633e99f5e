"""The FastAPI application."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI

from api import control, docs, endpoints, envelopes, errors, limits, ops, routes, ui
from api.middleware import HttpMetricsMiddleware, RequestIdMiddleware, SecurityHeadersMiddleware
from api.publishing import GroupCommit
from bus.broker.inspector import BrokerInspector
from bus.observability import metrics, tracing
from bus.observability.probes import Probes, own_sessions
from bus.runtime import Runtime
from bus.settings import Settings, get_settings


def _without_validation_errors(app: FastAPI) -> None:
    """Drop the validation 422 FastAPI documents for every route with parameters: this API
    never sends one (its errors are 400s in the envelope), so the document must not promise
    it. A 422 a route declares itself (a reused Idempotency-Key, in the envelope) stays."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # cached on the app: cleaned once
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if "HTTPValidationError" in str(responses.get("422")):
                        del responses["422"]
            models = schema.get("components", {}).get("schemas", {})
            models.pop("HTTPValidationError", None)
            models.pop("ValidationError", None)
            models[envelopes.JSON_VALUE] = envelopes.JSON_VALUE_SCHEMA  # event_data's values
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
_UNTRACED_PREFIXES = (docs.ASSETS_PATH, ui.ASSETS_PATH)


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    path = str(scope.get("path", ""))
    return path in _UNTRACED or path.startswith(_UNTRACED_PREFIXES)


def _telemetry(traced: bool) -> dict[str, Any]:
    """FastAPI's own OpenTelemetry (FastAPI >= 0.165, the ``otel`` extra) makes the server span
    of each request, ``POST /system/events``, continuing a caller's ``traceparent``; the sends
    of the request are its children. Only spans: the bus's metrics are Prometheus', its logs
    JSON lines, and per-operation spans (dependencies, endpoint) would double a request's spans.
    Probes, scrapes and static assets are not traced (a span every few seconds per replica,
    or per file of a page, telling nothing).
    Tracing off: FastAPI is left as it comes."""
    if not traced:
        return {}
    provider = tracing.setup("eventbus-api")  # once per process: each uvicorn worker's own
    return {
        "telemetry": {
            "tracer_provider": provider,
            "tracing": True,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "exclude": _untraced,
        }
    }


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """An app over a bus (built from settings when not given)."""
    runtime = runtime or Runtime(settings or get_settings())
    traced = runtime.settings.otel_enabled
    broker = BrokerInspector(
        runtime.settings.broker_url, sentinel_master=runtime.settings.broker_sentinel_master
    )
    probes = Probes(
        own_sessions(runtime.settings.database_url, runtime.sessions),
        broker,
        runtime.settings.queue_prefix,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Each request's unit of work runs in anyio's thread pool (40 threads by default); under
        # load that many threads mostly trade the GIL. Fewer keep the CPU on requests, and as a
        # unit of work takes and returns its connection in one trip, they never wait on the pool.
        to_thread.current_default_thread_limiter().total_tokens = runtime.settings.api_threads
        yield
        broker.close()
        probes.close()
        metrics.mark_process_dead(os.getpid())
        if traced:
            tracing.flush()

    app = FastAPI(
        title="eventbus — System Events API",
        version="0.1.0",
        description="Publish events for other modules, list them, and report their status.",
        lifespan=lifespan,
        # /system/events/ is a 404, not a 307 whose Location is built from the caller's Host.
        redirect_slashes=False,
        docs_url=None,  # api/docs.py serves both pages with their assets from the package
        redoc_url=None,
        **_telemetry(traced),
    )
    app.state.runtime = runtime
    app.state.group_commit = GroupCommit(runtime)
    app.state.probes = probes
    app.state.metrics_registry = metrics.scrape_registry(metrics.BacklogCollector(probes.backlog))
    errors.install(app)
    limits.install(app, runtime.settings)
    app.include_router(routes.router)
    app.include_router(control.router)
    app.include_router(endpoints.router)
    app.include_router(ops.router)
    app.include_router(docs.router)
    app.include_router(ui.router)  # before the docs' assets: it keeps /docs-assets/ui/ out
    app.mount(docs.ASSETS_PATH, docs.ASSETS)
    app.mount(ui.ASSETS_PATH, ui.ASSETS)
    _without_validation_errors(app)
    app.add_middleware(SecurityHeadersMiddleware, assets_path=docs.ASSETS_PATH)
    app.add_middleware(HttpMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: the id is set before anything runs
    return app
