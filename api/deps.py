"""Dependencies: the bus of this app, a committed-at-the-edge session, the caller, the body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session

from bus.auth import Principal, require_reader, require_writer
from bus.dispatch import take_scheduled
from bus.errors import BodyTooLarge
from bus.probes import Probes
from bus.runtime import Bus
from bus.schemas import parse_json_body

_bearer = HTTPBearer(auto_error=False, description="A JWT signed with the bus's key")


def get_bus(request: Request) -> Bus:
    bus: Bus = request.app.state.bus
    return bus


def get_probes(request: Request) -> Probes:
    probes: Probes = request.app.state.probes
    return probes


def metrics_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return registry


def db_session(request: Request) -> Iterator[Session]:
    """Commit when the route returns, before the response goes out, then send what it queued.

    Function scope makes the commit happen before the client sees a 201: an event a client was
    told about is durable.
    """
    bus = get_bus(request)
    with bus.sessions() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            take_scheduled(session)
            raise
        scheduled = take_scheduled(session)
    if scheduled:
        bus.dispatcher.send(scheduled)


def current_principal(request: Request, _: Annotated[Any, Depends(_bearer)]) -> Principal:
    """The verified caller (401 without a valid bearer token)."""
    return get_bus(request).verifier.verify(request.headers.get("authorization"))


def system_reader(caller: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """A caller that may list events (403 otherwise), refused before any input is looked at."""
    require_reader(caller)
    return caller


def system_writer(caller: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """A caller that may publish or update events (403 otherwise), refused before the body is
    read: a caller without the right learns nothing about what it sent."""
    require_writer(caller)
    return caller


async def json_body(request: Request) -> Any:
    """The request body as JSON, capped in size before it is read whole."""
    cap = get_bus(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge()
        chunks.append(chunk)
    return parse_json_body(b"".join(chunks))


BusDep = Annotated[Bus, Depends(get_bus)]
ProbesDep = Annotated[Probes, Depends(get_probes)]
MetricsRegistry = Annotated[CollectorRegistry, Depends(metrics_registry)]
DbSession = Annotated[Session, Depends(db_session, scope="function")]
Caller = Annotated[Principal, Depends(current_principal)]
SystemReader = Annotated[Principal, Depends(system_reader)]
SystemWriter = Annotated[Principal, Depends(system_writer)]
JsonBody = Annotated[Any, Depends(json_body)]
