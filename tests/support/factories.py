"""Plain-function factories: the seed's publish body, and rows written straight to the store."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from bus.events.rules import utcnow
from bus.events.schemas import parse_timestamp
from bus.runtime import Runtime
from bus.storage import event_store
from bus.storage.db import transaction
from bus.storage.models import EventStatus
from tests.support.tokens import TENANT_A

RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
NO_SUCH_EVENT = "3f0c2a8e-5b1d-4c7e-9a64-1d2e3f4a5b6c"
"""An id no test stores: fixed, so parametrized test ids are the same in every process
(``make check`` splits the tests between two with pytest-xdist)."""

SEED_PUBLISH_BODY = {
    "event_type": "inventory_updated",
    "source_module": "inventory",
    "target_module": "warehouse",
    "entity_type": "inventory_item",
    "entity_id": "item-uuid-1",
    "event_data": {
        "previous_quantity": 100,
        "new_quantity": 95,
        "warehouse_id": "warehouse-uuid-1",
    },
}
"""The seed's publish example."""


def event_values(**overrides: Any) -> dict[str, Any]:
    """A full row of ``system_events``: the seed's publish example, pending, created now."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": TENANT_A,
        "event_type": "inventory_updated",
        "source_module": "inventory",
        "target_module": "warehouse",
        "entity_type": "inventory_item",
        "entity_id": "item-uuid-1",
        "event_data": {"previous_quantity": 100, "new_quantity": 95},
        "status": EventStatus.PENDING,
        "retry_count": 0,
        "created_at": datetime.now(UTC),
        "processed_at": None,
        "error_message": None,
        "dispatched_at": None,
        "next_attempt_at": None,
        "request_id": None,
    }
    values.update(overrides)
    return values


def make_events(runtime: Runtime, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert rows (see :func:`event_values`) in one committed transaction."""
    made = list(rows)
    with transaction(runtime.sessions) as session:
        for values in made:
            event_store.insert_event(session, values)
    return made


def make_event(runtime: Runtime, **overrides: Any) -> dict[str, Any]:
    """Insert one event; ``overrides`` replace the defaults of :func:`event_values`."""
    return make_events(runtime, [event_values(**overrides)])[0]


def insert_events(runtime: Runtime, count: int, **overrides: Any) -> list[uuid.UUID]:
    """``count`` rows as if published, without a send: pending, never stamped unless
    overridden, empty data, entity ids ``item-<n>``."""
    now = utcnow()
    base = {"event_data": {}, "created_at": now}
    rows = make_events(
        runtime,
        (event_values(**{"entity_id": f"item-{n}", **base, **overrides}) for n in range(count)),
    )
    return [row["id"] for row in rows]


def make_seed_event(
    runtime: Runtime, seed_event: dict[str, Any], **overrides: Any
) -> dict[str, Any]:
    """Insert the row a seed example shows (its fields, times included), with a real id."""
    fields = {k: v for k, v in seed_event.items() if k not in ("id", "tenant_id")}
    fields["created_at"] = parse_timestamp(fields["created_at"], "created_at")
    if fields["processed_at"] is not None:
        fields["processed_at"] = parse_timestamp(fields["processed_at"], "processed_at")
    return make_event(runtime, **{**fields, **overrides})


def as_seed(event: dict[str, Any], seed_event: dict[str, Any]) -> dict[str, Any]:
    """An API event with the seed's placeholder id and tenant, to compare with the seed."""
    return {**event, "id": seed_event["id"], "tenant_id": seed_event["tenant_id"]}
