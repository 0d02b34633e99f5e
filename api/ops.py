"""Endpoints for the platform rather than for modules: liveness, readiness, Prometheus metrics.

Left out of the OpenAPI document (it describes the System Events API) and unauthenticated:
keep them off any public ingress.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import MetricsRegistry, ProbesDep
from bus.errors import NotReady
from bus.observability import metrics

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Liveness: the process answers. Looks at nothing else, so a database outage never gets
    every replica restarted at once; answered on the event loop, so a request pool that one
    tenant's load fills never makes it wait."""
    return {"success": True, "message": "ok"}


@router.get("/readyz")
async def readyz(probes: ProbesDep) -> dict[str, Any]:
    """Readiness: the database and the broker answer within 2 s; else 503 naming what is down.
    Asked on the probes' own threads and connections (``bus.observability.probes``), not the
    requests'."""
    readiness = await probes.check()
    if not readiness.ready:
        raise NotReady(readiness.down)
    return {"success": True, "message": "ready", "checks": {"database": "up", "broker": "up"}}


@router.get("/metrics")
def prometheus_metrics(registry: MetricsRegistry) -> Response:
    """Prometheus text format: every worker process's counters, and the backlog read now."""
    return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)
