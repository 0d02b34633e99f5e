"""The warehouse module's handlers."""

from __future__ import annotations

import logging

from workers import Event, handler

log = logging.getLogger(__name__)


@handler("warehouse", "inventory_updated")
def on_inventory_updated(event: Event) -> None:
    """Log the stock change of an item; a real handler would adjust the warehouse's stock.

    It may run twice for one event: a real one would key its write on ``event.id``.
    """
    data = event.event_data
    previous, new = data.get("previous_quantity"), data.get("new_quantity")
    change = new - previous if isinstance(new, int) and isinstance(previous, int) else None
    log.info(
        "tenant %s: %s %s in warehouse %s: %s -> %s (%s)",
        event.tenant_id,
        event.entity_type,
        event.entity_id,
        data.get("warehouse_id", "?"),
        previous,
        new,
        f"{change:+d}" if change is not None else "change unknown",
    )
