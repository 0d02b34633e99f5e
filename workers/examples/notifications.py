"""The notifications module's handlers."""

from __future__ import annotations

import logging

from workers import Event, handler

log = logging.getLogger(__name__)


@handler("notifications", "delivery_assigned")
def on_delivery_assigned(event: Event) -> None:
    """Tell a driver about a delivery; here the message is only logged.

    A real sender would pass ``event.idempotency_key`` to its provider so that a second
    delivery of this event does not notify the driver twice.
    """
    data = event.event_data
    driver = data.get("driver_id") or data.get("driver_name") or "the assigned driver"
    log.info(
        "tenant %s: notify %s of %s %s (key %s)",
        event.tenant_id,
        driver,
        event.entity_type,
        event.entity_id,
        event.idempotency_key,
    )
