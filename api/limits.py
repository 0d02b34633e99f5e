"""Heavy calls (replays, big list pages, batch publishes): admitted per tenant and in total, run
on threads of their own, so one tenant's load leaves the probes and other tenants' calls fast.

A heavy call holds its admission for its whole request: at most
``EVENTBUS_HEAVY_CALLS_PER_TENANT`` of one tenant and ``EVENTBUS_HEAVY_CALLS_TOTAL`` in all per
API process; one more is ``429 Too many concurrent requests`` with ``Retry-After`` at once
(never queued: a queue would hold the caller's memory and connection as long as it waits). Its
blocking work runs on ``EVENTBUS_HEAVY_THREADS`` threads, not on the pool of every other
route (``EVENTBUS_API_THREADS``): however many are admitted, at most that many compete with
light calls for the GIL and the database. When the last heavy call ends, freed heap memory is
handed back to the system (glibc's ``malloc_trim``): a burst of big pages must not leave the
process at its peak RSS for good.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from anyio import CapacityLimiter
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bus.auth import Principal
from bus.errors import BodyTooLarge, BusError
from bus.events.schemas import parse_json_body
from bus.settings import Settings

log = logging.getLogger("eventbus.api")

RETRY_AFTER_SECONDS = 1


class TooManyRequests(BusError):
    """The caller's tenant (or the process) has as many heavy calls in flight as it may."""

    status_code = 429
    message = "Too many concurrent requests"


def tenant_key(caller: Principal) -> str:
    """Whose budget a call spends: the token's tenant, or for a token without one (a system
    admin's) its subject."""
    return str(caller.tenant_id) if caller.tenant_id else f"sub:{caller.sub}"


class HeavyCalls:
    """The admission counts and the heavy threads of one API process."""

    def __init__(self, settings: Settings) -> None:
        self.per_tenant = settings.heavy_calls_per_tenant
        self.total = settings.heavy_calls_total
        self._threads = settings.heavy_threads
        self._in_flight: Counter[str] = Counter()
        self._limiters: dict[asyncio.AbstractEventLoop, CapacityLimiter] = {}

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    @asynccontextmanager
    async def admitted(self, caller: Principal) -> AsyncIterator[CapacityLimiter]:
        """Admit one heavy call of ``caller`` (429 beyond the caps) for the block; yields the
        limiter of the heavy threads."""
        key = tenant_key(caller)
        if self._in_flight[key] >= self.per_tenant or self.in_flight >= self.total:
            raise TooManyRequests()
        self._in_flight[key] += 1
        try:
            yield self._limiter()
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
            if not self._in_flight:
                _return_memory()  # on a thread of its own: the caller is not kept waiting

    def _limiter(self) -> CapacityLimiter:
        # One per event loop: a limiter's waiters belong to the loop they wait in (tests run
        # an app in several loops one after the other).
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            self._limiters = {loop: (limiter := CapacityLimiter(self._threads))}
        return limiter


_BEFORE_A_NODE = (b"[", b"{", b",", b":")


def parse_batch_body(raw: bytes, max_values: int) -> Any:
    """A batch body as JSON, once its keys and values are known to be at most ``max_values``
    (else ``413 Request body too large``): checking each costs far more than reading it (a
    15 MiB body of small keys took seconds), and the parser holds the GIL, and so the event
    loop, for as long as it reads one body: the count bounds both before any of it.

    Every key and value but the outermost follows one of ``[{,:``: their count bounds the
    nodes from above (those inside strings count too), at C speed, a few ms for 16 MiB. Runs
    on a heavy thread, never on the event loop.
    """
    if 1 + sum(raw.count(c) for c in _BEFORE_A_NODE) > max_values:
        raise BodyTooLarge()
    return parse_json_body(raw)


def _load_malloc_trim() -> Callable[[int], Any] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], Any] = ctypes.CDLL(name).malloc_trim  # glibc only
    except (OSError, AttributeError, TypeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


_trimming = threading.Lock()


def _return_memory() -> None:
    """Give the heap's free pages back to the system, on a thread (tens of ms after a burst of
    big pages; one at a time; nothing to do without glibc)."""
    if _malloc_trim is not None and not _trimming.locked():
        threading.Thread(target=_trim, name="eventbus-malloc-trim", daemon=True).start()


def _trim() -> None:
    with _trimming:
        assert _malloc_trim is not None
        _malloc_trim(0)  # ctypes lets go of the GIL meanwhile


async def _too_many(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TooManyRequests)
    return JSONResponse(
        {"success": False, "message": exc.message},
        exc.status_code,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def install(app: FastAPI, settings: Settings) -> None:
    """The app's heavy-call limits, and their 429 (the envelope, with ``Retry-After``)."""
    app.state.heavy_calls = HeavyCalls(settings)
    app.add_exception_handler(TooManyRequests, _too_many)
