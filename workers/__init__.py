"""Per-module workers: handlers registered with :func:`handler` run events from the bus.

Delivery is at least once: a handler may see the same event more than once. Use ``event.id``
(``event.idempotency_key``) as the idempotency key, or write the handler's effects through its
``session`` parameter, which commits them exactly once, with the processed status.
"""

from workers.event import Event
from workers.registry import handler, load_handlers

__all__ = ["Event", "handler", "load_handlers"]
