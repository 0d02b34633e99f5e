"""Group commit: concurrent publishes of one API process stored in one INSERT and one commit.

A commit, not a row, is what a publish costs (measured on this kind of machine: ~3,400
single-row commits a second, ~52,700 rows a second at 100 a commit). Each
``POST /system/events`` is checked on its own first (``bus.publish.service.prepare_publish``: a
bad body never fails another), then waits here. A
group is flushed when ``EVENTBUS_PUBLISH_BATCH_SIZE`` are waiting, or
``EVENTBUS_PUBLISH_BATCH_WINDOW_MS`` after its first arrived, in one trip to a thread: one
INSERT, one commit, then the sends (one message per module). Every request of the group is
answered only after that commit. At most ``EVENTBUS_API_THREADS`` groups are in flight; while
all are, arrivals gather for the next one, so the batches grow with the load by themselves.

If a group's commit fails, each of its publishes is tried again alone, so each request gets its
own outcome (a database that is down fails them all, each with its own error).

With tracing on, each publish also leaves its request's span context (``traces``): the group's
commit and sends run in one thread for many requests, whose own context is only the first's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from anyio import to_thread

from bus.observability import tracing
from bus.publish import service
from bus.runtime import Runtime
from bus.storage.models import EventRow

log = logging.getLogger(__name__)


class _Group:
    """Publishes waiting for the same commit, and the futures that answer them."""

    __slots__ = ("events", "futures", "traces")

    def __init__(self) -> None:
        self.events: list[EventRow] = []
        self.futures: list[asyncio.Future[dict[str, Any]]] = []
        self.traces: list[str | None] = []
        """Each event's request span (tracing on), else empty."""


class GroupCommit:
    """Gathers publishes into groups; :meth:`publish` answers once the event is committed."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self._runtime = runtime
        self._max_size = settings.publish_batch_size
        self._window = settings.publish_batch_window_ms / 1000
        self._max_in_flight = max(1, settings.api_threads)
        self._traced = settings.otel_enabled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self._waiting = _Group()
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, event: EventRow) -> dict[str, Any]:
        """The seed's event object of ``event``, once a commit holds it (its send follows)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests make several): start afresh
            self._loop = loop
            self._reset()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting.events.append(event)
        self._waiting.futures.append(future)
        if self._traced:
            self._waiting.traces.append(tracing.current_traceparent())
        if len(self._waiting.events) >= self._max_size or self._window == 0:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window, self._flush)
        return await future

    def _flush(self) -> None:
        """Start commits of what waits, at most ``max_size`` each, while a slot is free; what
        is left waits for the next group to finish."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting.events and self._in_flight < self._max_in_flight:
            waiting, group = self._waiting, _Group()
            group.events = waiting.events[: self._max_size]
            group.futures = waiting.futures[: self._max_size]
            group.traces = waiting.traces[: self._max_size]
            del waiting.events[: self._max_size], waiting.futures[: self._max_size]
            del waiting.traces[: self._max_size]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._commit(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit(self, group: _Group) -> None:
        try:
            try:
                views = await to_thread.run_sync(self._store, group.events, group.traces)
            except Exception:
                if len(group.events) == 1:
                    raise
                log.warning("commit of %d publishes failed; trying each alone", len(group.events))
                await self._one_by_one(group)
                return
            for future, view in zip(group.futures, views, strict=True):
                if not future.done():
                    future.set_result(view)
        except BaseException as exc:
            for future in group.futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._timer is None:  # a pending timer flushes its own group when due
                self._flush()

    async def _one_by_one(self, group: _Group) -> None:
        traces = group.traces or [None] * len(group.events)
        for event, future, trace in zip(group.events, group.futures, traces, strict=True):
            try:
                (view,) = await to_thread.run_sync(self._store, [event], [trace])
            except Exception as exc:
                if not future.done():  # done: its request went away meanwhile
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(view)

    def _store(
        self, events: Sequence[EventRow], traces: Sequence[str | None]
    ) -> list[dict[str, Any]]:
        with self._runtime.unit_of_work() as uow:
            views = service.store_published(uow, events, traces)
            uow.commit()
        return views
