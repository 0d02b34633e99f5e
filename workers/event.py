"""What a handler is given: a read-only view of one event and of the attempt at it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from bus.events import fields
from bus.storage.models import EventRow


def freeze(value: Any) -> Any:
    """JSON data made read-only all the way down: objects become mapping proxies, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """The mutable JSON twin of frozen data (for ``json.dumps`` or a copy to edit)."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


_COPIED = ("id", "tenant_id", *fields.TEXT, "created_at", "request_id")
"""The row's fields a handler sees as they are (``event_data`` is handed frozen)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event as its handler sees it; the database row stays out of a handler's reach.

    Delivery is at least once: a handler can run more than once for the same event (a worker
    killed after the handler returned, a broker that redelivers). Writes made through the
    handler's ``session`` commit in the same transaction as the processed status, so they happen
    exactly once; any other side effect should be keyed on :attr:`idempotency_key`.
    """

    id: uuid.UUID
    tenant_id: uuid.UUID
    event_type: str
    source_module: str
    target_module: str
    entity_type: str
    entity_id: str
    event_data: Mapping[str, Any]
    created_at: datetime
    retry_count: int
    """Failed attempts before this one."""
    attempt: int
    """This attempt's number, from 1."""
    request_id: str | None
    """The publishing HTTP request's id, for correlating logs."""

    @property
    def idempotency_key(self) -> str:
        """A stable key for side effects outside the bus's database: the event id."""
        return str(self.id)

    def data(self) -> dict[str, Any]:
        """A mutable copy of ``event_data``."""
        copied: dict[str, Any] = thaw(self.event_data)
        return copied

    @classmethod
    def of(cls, row: EventRow, attempt: int) -> Event:
        return cls(
            **{name: getattr(row, name) for name in _COPIED},
            event_data=freeze(row.event_data),
            retry_count=attempt - 1,
            attempt=attempt,
        )
