"""Dependencies: the bus of this app, a committed-at-the-edge session, the caller, the body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
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


# Dependencies that do no I/O are ``async def``: FastAPI runs a sync one in the thread pool, and
# each hop there and back costs more CPU than the dependency itself (the JWT check included).
# A publish then crosses to a thread twice: the route, and the commit with its send.


async def get_bus(request: Request) -> Bus:
    bus: Bus = request.app.state.bus
    return bus


async def get_probes(request: Request) -> Probes:
    probes: Probes = request.app.state.probes
    return probes


async def metrics_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return registry


async def db_session(request: Request) -> AsyncIterator[Session]:
    """Commit when the route returns, before the response goes out, then send what it queued.

    Function scope makes the commit happen before the client sees a 201: an event a client was
    told about is durable. Opening the session does no I/O (it connects on first use); the
    commit and the sends after it make one trip to the thread pool.
    """
    bus = request.app.state.bus
    session = bus.sessions()
    try:
        yield session
    except BaseException:
        await run_in_threadpool(_abandon, session)
        raise
    await run_in_threadpool(_commit_then_send, bus, session)


def _commit_then_send(bus: Bus, session: Session) -> None:
    with session:
        try:
            session.commit()
        except BaseException:
            session.rollback()
            take_scheduled(session)
            raise
        scheduled = take_scheduled(session)
    if scheduled:
        bus.dispatcher.send(scheduled)


def _abandon(session: Session) -> None:
    with session:
        session.rollback()
        take_scheduled(session)


async def current_principal(request: Request, _: Annotated[Any, Depends(_bearer)]) -> Principal:
    """The verified caller (401 without a valid bearer token)."""
    bus: Bus = request.app.state.bus
    return bus.verifier.verify(request.headers.get("authorization"))


async def system_reader(caller: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """A caller that may list events (403 otherwise), refused before any input is looked at."""
    require_reader(caller)
    return caller


async def system_writer(caller: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """A caller that may publish or update events (403 otherwise), refused before the body is
    read: a caller without the right learns nothing about what it sent."""
    require_writer(caller)
    return caller


async def json_body(request: Request) -> Any:
    """The request body as JSON, capped in size before it is read whole."""
    bus: Bus = request.app.state.bus
    cap = bus.settings.max_body_bytes
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
