"""The end-to-end phase's handler, loaded by bus workers through ``EVENTBUS_HANDLERS``.

It does nothing, so the phase measures the bus's own cost per event (claim, status, commit,
ack) against bare Celery's no-op task.
"""

from __future__ import annotations

from bench.names import E2E_EVENT_TYPE, E2E_MODULE
from workers import Event, handler


@handler(E2E_MODULE, E2E_EVENT_TYPE)
def noop(event: Event) -> None:
    """Nothing to do: the bus records the event processed when this returns."""
