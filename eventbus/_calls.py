"""The client's insides: what each call sends and how its answer reads, shared by
:class:`eventbus.client.Client` and :class:`eventbus.client.AsyncClient` (which differ only in
how they wait): the result types, the retry policy, one request's plan, the page walk."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

import httpx

from eventbus.errors import (
    ServerError,
    error_for,
)

EVENTS = "/system/events"
IN_PROGRESS = "A request with this idempotency key is in progress"
RETRIED_STATUSES = frozenset({502, 503, 504})


class Event(TypedDict):
    """The seed's event object."""

    id: str
    tenant_id: str
    event_type: str
    source_module: str
    target_module: str
    entity_type: str
    entity_id: str
    event_data: dict[str, Any]
    status: str
    retry_count: int
    created_at: str
    processed_at: str | None
    error_message: str | None


class EventDetail(TypedDict):
    """``GET /system/events/{id}``: the event and its attempts, oldest first."""

    event: Event
    attempts: list[dict[str, Any]]


class ReplayResult(TypedDict):
    matched: int
    replayed: int


@dataclass(frozen=True, slots=True)
class Retry:
    """How a call is retried: at most ``attempts`` tries in all; the wait before try n+1 is
    drawn between half and all of ``base · 2ⁿ⁻¹`` seconds, capped at ``cap``."""

    attempts: int = 4
    base: float = 0.2
    cap: float = 5.0

    def delay(self, tries: int) -> float:
        full = min(self.cap, self.base * 2.0 ** (tries - 1))
        return full / 2 + random.uniform(0, full / 2)


@dataclass(slots=True)
class _Request:
    """One logical call: the same method, URL, body and key on every try."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    keyed: bool = False
    resend: bool = True
    """False: retry only when the request cannot have reached the server."""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.keyed and "Idempotency-Key" not in self.headers:
            self.headers["Idempotency-Key"] = str(uuid.uuid4())

    @classmethod
    def sent_once(
        cls, method: str, path: str, tenant_id: uuid.UUID | str | None, body: Any
    ) -> _Request:
        """A write the API does not dedupe by key: sent again only when it cannot have
        reached the server (a ``failed`` status sent twice counts two failures)."""
        return cls(method, path, _tenant(tenant_id), body, keyed=True, resend=False)

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(
            self.method, self.path, params=self.params, json=self.body, headers=self.headers
        )

    def retry_after_error(self, exc: httpx.TransportError) -> bool:
        return self.resend or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)

    def retry_after_response(self, response: httpx.Response) -> bool:
        if not self.resend:
            return False
        if response.status_code in RETRIED_STATUSES:
            return True
        return self.keyed and response.status_code == 409 and _message(response) == IN_PROGRESS


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str):
        return message
    return response.reason_phrase or f"HTTP {response.status_code}"


def _result(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    raise error_for(response.status_code, _message(response))


def _unreachable(exc: httpx.TransportError) -> ServerError:
    return ServerError(None, f"{type(exc).__name__}: {exc}")


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _tenant(tenant_id: uuid.UUID | str | None) -> dict[str, str]:
    return {} if tenant_id is None else {"tenant_id": str(tenant_id)}


_TEXT = ("event_type", "source_module", "target_module", "entity_type", "entity_id")
"""A publish's text fields, in order (``bus.events.fields.TEXT``: the client does not import
the bus, ``tests/unit/test_fields.py`` holds the two together)."""


def _publish_body(*published: Any) -> dict[str, Any]:
    """A publish body from its fields' values: :data:`_TEXT`'s, then ``event_data``."""
    *text, event_data = published
    body = dict(zip(_TEXT, text, strict=True))
    # A non-mapping goes as it is: the API names it (``Event data must be object``).
    body["event_data"] = dict(event_data) if isinstance(event_data, Mapping) else event_data
    return body


class _Calls:
    """The calls as requests, shared by both clients."""

    @staticmethod
    def publish(
        tenant_id: uuid.UUID | str | None, body: dict[str, Any], key: str | None
    ) -> _Request:
        headers = {"Idempotency-Key": key} if key else {}
        return _Request("POST", EVENTS, _tenant(tenant_id), body, keyed=True, headers=headers)

    @staticmethod
    def publish_many(
        tenant_id: uuid.UUID | str | None, events: Sequence[Mapping[str, Any]], key: str | None
    ) -> _Request:
        headers = {"Idempotency-Key": key} if key else {}
        body = {"events": [dict(event) for event in events]}
        return _Request(
            "POST", f"{EVENTS}/batch", _tenant(tenant_id), body, keyed=True, headers=headers
        )

    @staticmethod
    def get(event_id: uuid.UUID | str, tenant_id: uuid.UUID | str | None) -> _Request:
        return _Request("GET", f"{EVENTS}/{event_id}", _tenant(tenant_id))

    @staticmethod
    def update_status(
        event_id: uuid.UUID | str,
        status: str,
        tenant_id: uuid.UUID | str | None,
        processed_at: datetime | str | None,
        error_message: str | None,
    ) -> _Request:
        body: dict[str, Any] = {"status": status}
        if processed_at is not None:
            body["processed_at"] = _text(processed_at)
        if error_message is not None:
            body["error_message"] = error_message
        return _Request.sent_once("PUT", f"{EVENTS}/{event_id}", tenant_id, body)

    @staticmethod
    def page(
        tenant_id: uuid.UUID | str | None, filters: Mapping[str, Any], walk: _Walk
    ) -> _Request:
        """The list's next page for ``walk``."""
        params = {**_tenant(tenant_id), **{k: str(v) for k, v in filters.items() if v is not None}}
        params["limit"] = str(walk.limit)
        if walk.cursor is not None:
            params["cursor"] = walk.cursor
        elif walk.page is not None:
            params["page"] = str(walk.page)
        return _Request("GET", EVENTS, params)

    @staticmethod
    def replay(
        tenant_id: uuid.UUID | str | None,
        filters: Mapping[str, Any],
        dry_run: bool,
        max_events: int | None,
    ) -> _Request:
        body: dict[str, Any] = {k: _text(v) for k, v in filters.items() if v is not None}
        body["dry_run"] = dry_run
        if max_events is not None:
            body["max"] = max_events
        return _Request.sent_once("POST", f"{EVENTS}/replay", tenant_id, body)


@dataclass(slots=True)
class _Walk:
    """Where a walk of the list is: by ``next_cursor`` when the API gives one, else by
    page/limit (the answered ones: a page cut at the response cap answers a smaller limit)."""

    limit: int
    cursor: str | None = None
    page: int | None = None
    done: bool = False

    def advance(self, body: dict[str, Any]) -> list[Event]:
        events: list[Event] = body.get("events") or []
        if "next_cursor" in body:
            self.cursor = body["next_cursor"]
            self.done = self.cursor is None or not events
            return events
        page, limit, total = int(body["page"]), int(body["limit"]), int(body["total"])
        self.page, self.limit = page + 1, limit
        self.done = not events or (page - 1) * limit + len(events) >= total
        return events
