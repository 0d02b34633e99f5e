"""The bench's handlers, loaded by bus workers through ``EVENTBUS_HANDLERS``.

The end-to-end phase's does nothing, so the phase measures the bus's own cost per event
(claim, status, commit, ack) against bare Celery's no-op task. The order phase's two write
one row per run through the attempt's session (so a row exists exactly when the run
committed) and fail the first attempt of the events marked ``fail``.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.names import E2E_EVENT_TYPE, E2E_MODULE, ORDERED_MODULE, UNORDERED_MODULE
from workers import Event, handler

EFFECTS = "bench_effects"
_RECORD = text(f"INSERT INTO {EFFECTS} (event_id, entity_id, seq) VALUES (:e, :k, :s)")  # noqa: S608


@handler(E2E_MODULE, E2E_EVENT_TYPE)
def noop(event: Event) -> None:
    """Nothing to do: the bus records the event processed when this returns."""


def _effect(event: Event, session: Session) -> None:
    data = event.event_data
    if data.get("fail") and event.attempt == 1:
        raise RuntimeError("planned failure of a first attempt")
    session.execute(_RECORD, {"e": event.id, "k": event.entity_id, "s": int(data["seq"])})


@handler(ORDERED_MODULE, "*", ordered=True)
def ordered(event: Event, session: Session) -> None:
    """One event of an entity at a time, in the order the bus committed them."""
    _effect(event, session)


@handler(UNORDERED_MODULE, "*")
def unordered(event: Event, session: Session) -> None:
    _effect(event, session)
