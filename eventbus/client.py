"""A Python client for the System Events API: :class:`Client` and :class:`AsyncClient` on httpx.

Each write sends an ``Idempotency-Key`` made once per call (uuid4), the same on every retry
of that call, so a publish retried after a dropped connection or a 502/503/504 is stored once
(the API answers the first response again). Retries back off exponentially with jitter, up to
a cap, a bounded number of times. Errors raise :mod:`eventbus.errors` classes carrying the API's
status and message. No global state: every setting lives on the client object.

Which failures are retried:

* reads (``get``, ``events``) and keyed publishes (``publish``, ``publish_many``): a connection
  error or timeout, 502/503/504, and ``409 A request with this idempotency key is in progress``
  (the first try is still running on the server; the retry then gets its answer);
* ``update_status`` and ``replay``: only failures where the request surely never reached the
  server (the connection could not be opened), since the API does not dedupe those by key and a
  ``failed`` status sent twice counts two failures.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Self

import httpx

from eventbus._calls import (
    Event,
    EventDetail,
    ReplayResult,
    Retry,
    _Calls,
    _publish_body,
    _Request,
    _result,
    _unreachable,
    _Walk,
)
from eventbus.errors import (
    AuthError,
    Conflict,
    EventBusError,
    InvalidRequest,
    NotFound,
    ServerError,
)

__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "Conflict",
    "Event",
    "EventBusError",
    "EventDetail",
    "InvalidRequest",
    "NotFound",
    "ReplayResult",
    "Retry",
    "ServerError",
]


class Client:
    """A synchronous client; use it as a context manager (or call :meth:`close`).

    ``token`` is the bearer JWT; ``timeout`` is httpx's (seconds, or an ``httpx.Timeout``);
    ``transport`` replaces httpx's own (tests, proxies).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retry: Retry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or Retry()
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Request) -> dict[str, Any]:
        tries = 0
        while True:
            tries += 1
            last = tries >= self.retry.attempts
            try:
                response = self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                if last or not call.retry_after_error(exc):
                    raise _unreachable(exc) from exc
            else:
                if last or not call.retry_after_response(response):
                    return _result(response)
                response.close()
            time.sleep(self.retry.delay(tries))

    def publish(
        self,
        *,
        event_type: str,
        source_module: str,
        target_module: str,
        entity_type: str,
        entity_id: str,
        event_data: Mapping[str, Any],
        tenant_id: uuid.UUID | str | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """``POST /system/events``: the stored event (status ``pending``)."""
        body = _publish_body(
            event_type, source_module, target_module, entity_type, entity_id, event_data
        )
        event: Event = self._send(_Calls.publish(tenant_id, body, idempotency_key))["event"]
        return event

    def publish_many(
        self,
        events: Sequence[Mapping[str, Any]],
        *,
        tenant_id: uuid.UUID | str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Event]:
        """``POST /system/events/batch``: all stored or none; the events in input order."""
        call = _Calls.publish_many(tenant_id, events, idempotency_key)
        stored: list[Event] = self._send(call)["events"]
        return stored

    def get(
        self, event_id: uuid.UUID | str, *, tenant_id: uuid.UUID | str | None = None
    ) -> EventDetail:
        """``GET /system/events/{id}``: the event and its attempts."""
        body = self._send(_Calls.get(event_id, tenant_id))
        return {"event": body["event"], "attempts": body.get("attempts", [])}

    def events(
        self, *, tenant_id: uuid.UUID | str | None = None, page_size: int = 100, **filters: Any
    ) -> Iterator[Event]:
        """Every event matching ``filters`` (``status``, ``event_type``, ``source_module``,
        ``target_module``, ``entity_type``), newest first, fetched a page at a time."""
        walk = _Walk(page_size)
        while not walk.done:
            call = _Calls.page(tenant_id, filters, walk)
            yield from walk.advance(self._send(call))

    def update_status(
        self,
        event_id: uuid.UUID | str,
        status: str,
        *,
        processed_at: datetime | str | None = None,
        error_message: str | None = None,
        tenant_id: uuid.UUID | str | None = None,
    ) -> Event:
        """``PUT /system/events/{id}``: the event after the change."""
        call = _Calls.update_status(event_id, status, tenant_id, processed_at, error_message)
        event: Event = self._send(call)["event"]
        return event

    def replay(
        self,
        *,
        dry_run: bool = False,
        max_events: int | None = None,
        tenant_id: uuid.UUID | str | None = None,
        **filters: Any,
    ) -> ReplayResult:
        """``POST /system/events/replay``: send the matching events again (``dry_run``: only
        count them). Filters are the list's plus ``created_after`` / ``created_before``."""
        body = self._send(_Calls.replay(tenant_id, filters, dry_run, max_events))
        return {"matched": body["matched"], "replayed": body["replayed"]}


class AsyncClient:
    """:class:`Client` for asyncio: the same calls, awaited; ``events`` is an async iterator."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retry: Retry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or Retry()
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Request) -> dict[str, Any]:
        tries = 0
        while True:
            tries += 1
            last = tries >= self.retry.attempts
            try:
                response = await self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                if last or not call.retry_after_error(exc):
                    raise _unreachable(exc) from exc
            else:
                if last or not call.retry_after_response(response):
                    return _result(response)
                await response.aclose()
            await asyncio.sleep(self.retry.delay(tries))

    async def publish(
        self,
        *,
        event_type: str,
        source_module: str,
        target_module: str,
        entity_type: str,
        entity_id: str,
        event_data: Mapping[str, Any],
        tenant_id: uuid.UUID | str | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """See :meth:`Client.publish`."""
        body = _publish_body(
            event_type, source_module, target_module, entity_type, entity_id, event_data
        )
        event: Event = (await self._send(_Calls.publish(tenant_id, body, idempotency_key)))["event"]
        return event

    async def publish_many(
        self,
        events: Sequence[Mapping[str, Any]],
        *,
        tenant_id: uuid.UUID | str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Event]:
        """See :meth:`Client.publish_many`."""
        call = _Calls.publish_many(tenant_id, events, idempotency_key)
        stored: list[Event] = (await self._send(call))["events"]
        return stored

    async def get(
        self, event_id: uuid.UUID | str, *, tenant_id: uuid.UUID | str | None = None
    ) -> EventDetail:
        """See :meth:`Client.get`."""
        body = await self._send(_Calls.get(event_id, tenant_id))
        return {"event": body["event"], "attempts": body.get("attempts", [])}

    async def events(
        self, *, tenant_id: uuid.UUID | str | None = None, page_size: int = 100, **filters: Any
    ) -> AsyncIterator[Event]:
        """See :meth:`Client.events`."""
        walk = _Walk(page_size)
        while not walk.done:
            call = _Calls.page(tenant_id, filters, walk)
            for event in walk.advance(await self._send(call)):
                yield event

    async def update_status(
        self,
        event_id: uuid.UUID | str,
        status: str,
        *,
        processed_at: datetime | str | None = None,
        error_message: str | None = None,
        tenant_id: uuid.UUID | str | None = None,
    ) -> Event:
        """See :meth:`Client.update_status`."""
        call = _Calls.update_status(event_id, status, tenant_id, processed_at, error_message)
        event: Event = (await self._send(call))["event"]
        return event

    async def replay(
        self,
        *,
        dry_run: bool = False,
        max_events: int | None = None,
        tenant_id: uuid.UUID | str | None = None,
        **filters: Any,
    ) -> ReplayResult:
        """See :meth:`Client.replay`."""
        body = await self._send(_Calls.replay(tenant_id, filters, dry_run, max_events))
        return {"matched": body["matched"], "replayed": body["replayed"]}
