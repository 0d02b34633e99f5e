"""Dependencies: the bus of this app, the request's unit of work, the caller, the body."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

from anyio import to_thread
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

P = ParamSpec("P")
T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False, description="A JWT signed with the bus's key")


# Dependencies that do no I/O are ``async def``: FastAPI runs a sync one in the thread pool, and
# each hop there and back costs more CPU than the dependency itself (the JWT check included).
# A request crosses to a thread once: its unit of work (see UnitOfWork).


async def get_bus(request: Request) -> Bus:
    bus: Bus = request.app.state.bus
    return bus


async def get_probes(request: Request) -> Probes:
    probes: Probes = request.app.state.probes
    return probes


async def metrics_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return registry


class UnitOfWork:
    """The request's transaction, run in one trip to a thread: the service call, the commit,
    then the sends the call scheduled.

    The commit happens before the route answers, so an event a client was told about is durable;
    the sends follow the commit and are dropped on a rollback. Everything that blocks runs in
    that one thread: the session takes a pooled connection and gives it back within the same
    trip, so a request never holds a connection while it waits for a thread (with a bounded
    thread pool, requests holding every connection while waiting for a thread, and threads
    waiting for a connection, would stall each other until the pool timed out).
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def run(
        self, call: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``call(session, *args, **kwargs)`` in the unit of work; its result once committed."""
        return await to_thread.run_sync(functools.partial(self._run, call, *args, **kwargs))

    def _run(
        self, call: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with self._bus.sessions() as session:
            try:
                result = call(session, *args, **kwargs)
                session.commit()
            except BaseException:
                session.rollback()
                take_scheduled(session)
                raise
            scheduled = take_scheduled(session)
        if scheduled:
            self._bus.dispatcher.send(scheduled)
        return result


async def unit_of_work(request: Request) -> UnitOfWork:
    return UnitOfWork(request.app.state.bus)


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
Work = Annotated[UnitOfWork, Depends(unit_of_work)]
Caller = Annotated[Principal, Depends(current_principal)]
SystemReader = Annotated[Principal, Depends(system_reader)]
SystemWriter = Annotated[Principal, Depends(system_writer)]
JsonBody = Annotated[Any, Depends(json_body)]
