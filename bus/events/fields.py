"""An event's fields, defined once.

What a publisher sends, what the seed's event object shows, and what the bus keeps for itself.
The table (:class:`bus.storage.models.SystemEvent`), the row type
(:class:`bus.storage.models.EventRow`), the input rules (:class:`bus.events.schemas.NewEvent`),
the handler's ``workers.event.Event``, the outbox (``eventbus.outbox.publish``) and the client
(``eventbus.client``) are built from these names or checked against them
(``tests/unit/test_fields.py``).
"""

from __future__ import annotations

TEXT = ("event_type", "source_module", "target_module", "entity_type", "entity_id")
"""The publisher's text fields, in the order the first missing one is named."""

PUBLISHED = (*TEXT, "event_data")
"""What a publisher sends; every other field is the bus's to set."""

SEED = (
    "id",
    "tenant_id",
    *PUBLISHED,
    "status",
    "retry_count",
    "created_at",
    "processed_at",
    "error_message",
)
"""The seed's event object, in its order."""

BOOKKEEPING = ("dispatched_at", "next_attempt_at", "request_id")
"""The bus's own columns, never shown in the seed's envelopes."""

COLUMNS = (*SEED, *BOOKKEEPING)
"""Every column of ``system_events``."""
