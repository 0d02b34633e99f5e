"""What a handler is given: a read-only view of one event and of the attempt at it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

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
        # Written out: built once per event on the worker's hot path, where a loop over the
        # field names costs a microsecond more (tests/unit/test_fields.py keeps them agreed).
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            event_type=row.event_type,
            source_module=row.source_module,
            target_module=row.target_module,
            entity_type=row.entity_type,
            entity_id=row.entity_id,
            event_data=freeze(row.event_data),
            created_at=row.created_at,
            retry_count=attempt - 1,
            attempt=attempt,
            request_id=row.request_id,
        )
