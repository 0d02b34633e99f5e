"""Dependencies: the bus of this app, the request's unit of work, the caller, the body."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar, cast

import anyio
from anyio import CapacityLimiter, to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session

from api.limits import HeavyCalls
from api.publishing import GroupCommit
from bus.auth import Principal, require_reader, require_writer
from bus.errors import BodyTooLarge, BusError, InvalidToken
from bus.events.schemas import parse_json_body
from bus.observability.probes import Probes
from bus.runtime import Runtime
from bus.uow import UnitOfWork

P = ParamSpec("P")
T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False, description="A JWT signed with the bus's key")


# Dependencies that do no I/O are ``async def``: FastAPI runs a sync one in the thread pool, and
# each hop there and back costs more CPU than the dependency itself (the JWT check included).
# A request crosses to a thread once: its unit of work (see Work).


async def get_bus(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_probes(request: Request) -> Probes:
    probes: Probes = request.app.state.probes
    return probes


async def metrics_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return registry


class ServerBusy(BusError):
    """A request waited longer than ``EVENTBUS_API_WAIT_SECONDS`` for a thread: nothing of it
    ran, so a retry (with or without an ``Idempotency-Key``) is safe."""

    status_code = 503
    message = "Server busy: retry"


_admitted: dict[asyncio.AbstractEventLoop, CapacityLimiter] = {}


def _no_wait() -> CapacityLimiter:
    """A limiter no call waits for, for a call :meth:`Work._in_thread` admitted itself (one per
    event loop: a limiter belongs to the loop it is used in; tests run several)."""
    loop = asyncio.get_running_loop()
    limiter = _admitted.get(loop)
    if limiter is None:
        _admitted.clear()
        limiter = _admitted[loop] = CapacityLimiter(1_000_000)
    return limiter


class Work:
    """Runs a request's service call in one trip to a thread, in a unit of work of its own.

    :meth:`run` commits before the route answers, so an event a client was told about is
    durable; the sends follow the commit (``bus.uow.UnitOfWork.commit``) and are dropped on a
    rollback. :meth:`read` is for calls that only read: no commit. Everything that blocks runs
    in that one thread: the session takes a pooled connection and gives it back within the
    same trip, so a request never holds a connection while it waits for a thread (with a
    bounded thread pool, requests holding every connection while waiting for a thread, and
    threads waiting for a connection, would stall each other until the pool timed out).
    """

    def __init__(
        self, runtime: Runtime, heavy: HeavyCalls, limiter: CapacityLimiter | None = None
    ) -> None:
        self._runtime = runtime
        self._heavy = heavy
        self._limiter = limiter
        """The heavy threads' limiter for a heavy call's Work; None: the pool of every route."""

    @asynccontextmanager
    async def heavy(self, caller: Principal, *, when: bool = True) -> AsyncIterator[Work]:
        """For the block, a Work whose calls run on the heavy threads, once ``caller``'s heavy
        call is admitted (``api.limits``: 429 beyond the caps). ``when`` False: this Work, as
        it is (a call that is not heavy this time)."""
        if not when:
            yield self
            return
        async with self._heavy.admitted(caller) as limiter:
            yield Work(self._runtime, self._heavy, limiter)

    async def call(self, call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``call(*args, **kwargs)`` on a thread: for CPU-bound work (a batch's parsing) that
        must not hold the event loop."""
        return await self._in_thread(functools.partial(call, *args, **kwargs))

    async def steps(self, steps: Generator[None, None, T]) -> T:
        """Drive ``steps`` to its end, one trip to a thread per step
        (``bus.publish.replay.steps``: one committed batch each), and return what it returns:
        between steps, the thread is free for other calls."""
        while True:
            done, value = await to_thread.run_sync(_step, steps, limiter=self._limiter)
            if done:
                return cast(T, value)

    async def run(
        self, call: Callable[Concatenate[UnitOfWork, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``call(uow, *args, **kwargs)``, committed; its result once committed."""
        return await self._in_thread(functools.partial(self._run, call, *args, **kwargs))

    async def read(
        self, call: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``call(session, *args, **kwargs)`` for a call that only reads."""
        return await self._in_thread(functools.partial(self._read, call, *args, **kwargs))

    def batches(
        self,
        call: Callable[Concatenate[Callable[[], UnitOfWork], P], Generator[None, None, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Awaitable[T]:
        """``call(units, *args, **kwargs)`` for a call that commits several units of work, one
        per batch, each made by ``units()`` (``bus.publish.replay.steps``): its commits are its own,
        and it runs by :meth:`steps`."""
        return self.steps(call(self._runtime.unit_of_work, *args, **kwargs))

    async def _in_thread(self, call: Callable[[], T]) -> T:
        """``call()`` on one of the threads, once one is free within ``EVENTBUS_API_WAIT_SECONDS``
        (else ``503 Server busy: retry``): a database so slow that every thread is busy must
        not queue requests past their clients' timeouts (the network suite's slow links made
        keyed publishes wait over 30 s: tests/faults)."""
        if self._limiter is not None:  # a heavy call: its admission (429) bounds its wait
            return await to_thread.run_sync(call, limiter=self._limiter)
        limiter = to_thread.current_default_thread_limiter()
        try:
            with anyio.fail_after(self._runtime.settings.api_wait_seconds):
                await limiter.acquire()
        except TimeoutError:
            raise ServerBusy() from None
        try:
            return await to_thread.run_sync(call, limiter=_no_wait())
        finally:
            limiter.release()

    def _run(
        self, call: Callable[Concatenate[UnitOfWork, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with self._runtime.unit_of_work() as uow:
            result = call(uow, *args, **kwargs)
            uow.commit()
        return result

    def _read(
        self, call: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with self._runtime.sessions() as session:
            return call(session, *args, **kwargs)


def _step(steps: Generator[None, None, T]) -> tuple[bool, T | None]:
    # StopIteration must not cross a thread into a coroutine (a Future refuses it).
    try:
        next(steps)
    except StopIteration as stop:
        return True, stop.value
    return False, None


async def work(request: Request) -> Work:
    return Work(request.app.state.runtime, request.app.state.heavy_calls)


async def current_principal(request: Request, _: Annotated[Any, Depends(_bearer)]) -> Principal:
    """The verified caller (401 without a valid bearer token; two Authorization headers are
    ``Invalid token``: a proxy may check one while the API reads the other)."""
    runtime: Runtime = request.app.state.runtime
    if len(request.headers.getlist("authorization")) > 1:
        raise InvalidToken()
    return runtime.verifier.verify(request.headers.get("authorization"))


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
    """The request body as JSON, capped in size (``EVENTBUS_MAX_BODY_BYTES``) before it is read
    whole."""
    runtime: Runtime = request.app.state.runtime
    return await _read_json(request, runtime.settings.max_body_bytes)


async def read_body(request: Request) -> bytes:
    """The request body as bytes, capped as :func:`json_body` caps it: for a body whose
    headers say how to read it (a publish's CloudEvent, ``api.cloudevents``)."""
    runtime: Runtime = request.app.state.runtime
    return await _read(request, runtime.settings.max_body_bytes)


async def read_batch_body(request: Request) -> bytes:
    """A batch's body as bytes, capped by ``EVENTBUS_MAX_BATCH_BODY_BYTES``. Read by the route
    once its heavy call is admitted (a refused call never brings up to 16 MiB into memory), and
    parsed on a heavy thread (``api.limits.parse_batch_body``), never on the event loop."""
    runtime: Runtime = request.app.state.runtime
    return await _read(request, runtime.settings.max_batch_body_bytes)


async def get_group_commit(request: Request) -> GroupCommit:
    group: GroupCommit = request.app.state.group_commit
    return group


async def _read_json(request: Request, cap: int) -> Any:
    return parse_json_body(await _read(request, cap))


def declared_length(request: Request) -> float:
    """The body's declared length; infinite when not declared (chunked) or not a number."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else float("inf")


async def _read(request: Request, cap: int) -> bytes:
    declared = declared_length(request)
    if declared != float("inf") and declared > cap:
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


BusDep = Annotated[Runtime, Depends(get_bus)]
ProbesDep = Annotated[Probes, Depends(get_probes)]
MetricsRegistry = Annotated[CollectorRegistry, Depends(metrics_registry)]
WorkDep = Annotated[Work, Depends(work)]
SystemReader = Annotated[Principal, Depends(system_reader)]
SystemWriter = Annotated[Principal, Depends(system_writer)]
JsonBody = Annotated[Any, Depends(json_body)]
GroupCommitDep = Annotated[GroupCommit, Depends(get_group_commit)]
