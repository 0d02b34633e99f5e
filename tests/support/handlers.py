"""Handlers for tests that run real workers, loaded by ``eventbus worker`` through
EVENTBUS_HANDLERS (:data:`tests.support.workers.HANDLERS`).

One behaviour for every test module, steered by the event's data so each test says in its
own body what the handler should do:

* ``sleep``: seconds to wait first;
* ``fail_until``: raise while the attempt number is at most this;
* ``kill_until``: SIGKILL the running process while the attempt number is at most this;
* ``kill_once``: a file; SIGKILL the running process if it does not exist yet (creating it), so
  exactly one run dies whatever its attempt number;
* ``write``: insert a row into ``handler_effects`` (:data:`tests.support.workers.EFFECTS_TABLE`)
  through the handler's session;
* ``trace``: a file to which each attempt appends ``<attempt> <unix time>``;
* ``commit``: call ``session.commit()``, which a handler must not do.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from workers import Event, handler


def behave(event: Event, session: Session) -> None:
    data = event.event_data
    if data.get("trace"):
        with Path(data["trace"]).open("a") as trace:
            trace.write(f"{event.attempt} {time.time()}\n")
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    if data.get("write"):
        session.execute(
            text("INSERT INTO handler_effects (event_id, attempt, pid) VALUES (:e, :a, :p)"),
            {"e": event.id, "a": event.attempt, "p": os.getpid()},
        )
    if data.get("commit"):
        session.commit()
    if data.get("kill_once"):
        marker = Path(data["kill_once"])
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    if event.attempt <= int(data.get("kill_until", 0)):
        os.kill(os.getpid(), signal.SIGKILL)
    if event.attempt <= int(data.get("fail_until", 0)):
        raise RuntimeError(f"planned failure of attempt {event.attempt}")


@handler("warehouse", "*")
def warehouse(event: Event, session: Session) -> None:
    behave(event, session)


@handler("notifications", "*")
def notifications(event: Event, session: Session) -> None:
    behave(event, session)


@handler("flaky", "*")
def flaky(event: Event, session: Session) -> None:
    behave(event, session)


@handler("ordered", "*", ordered=True)
def ordered(event: Event, session: Session) -> None:
    """In order per entity; a failure after the last attempt holds its key."""
    behave(event, session)


@handler("ordered_skip", "*", ordered=True, on_failure="skip")
def ordered_skip(event: Event, session: Session) -> None:
    """In order per entity; a failure after the last attempt lets its key move on."""
    behave(event, session)


@handler("poison", "*")
def poison(event: Event, session: Session) -> None:
    behave(event, session)
