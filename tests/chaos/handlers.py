"""The chaos suite's handler, loaded by ``eventbus worker`` through EVENTBUS_HANDLERS.

It keeps a ledger the suite counts after the bus has settled:

* ``chaos_ledger`` rows are written on a connection of the handler's own, in autocommit, so
  they survive whatever happens to the attempt: ``start`` when the handler begins, ``scripted``
  right before it raises on purpose, and ``effect`` for a side effect outside the bus's
  transaction (it stands for an e-mail, an HTTP call to a partner…);
* ``chaos_completions`` rows are written through the handler's ``session``, so one commits only
  together with the event's ``processed`` status.

An attempt with a ``start`` row and neither a completion nor a ``scripted`` row was cut short by
something outside the handler: an injected fault. ``chaos_effects_keyed`` is the same outside
effect made idempotent with the event id as key, as the docs tell handler authors to do.

What the handler does is steered by the event's data:

* ``expect``: ``processed`` or ``failed``, how the event must end (read by the suite only);
* ``fail_until``: raise while the attempt number is at most this;
* ``kill_until``: SIGKILL the running process while the attempt number is at most this;
* ``sleep``: seconds of work before the outside effect;
* ``effect``: perform the outside effect, both naive and keyed;
* ``sleep_after_effect``: seconds between the outside effect and the return (the window in
  which a death repeats the effect).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.chaos.ledger import MODULES, ORDERED_MODULE, POISON_MODULE
from workers import Event, handler

_ledger: dict[str, Any] = {}
LEDGER_APPLICATION = "chaos-ledger"
"""The ledger connection's name on the server: the suite's, not the bus's (the network suite
leaves it out of what it measures of the bus's connections)."""


def _dsn() -> str:
    url = os.environ["EVENTBUS_DATABASE_URL"]
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _connection() -> psycopg.Connection[Any]:
    """This process's ledger connection (a forked pool child makes its own)."""
    conn = _ledger.get("conn")
    if conn is None or _ledger.get("pid") != os.getpid() or conn.closed:
        conn = psycopg.connect(
            _dsn(), autocommit=True, connect_timeout=3, application_name=LEDGER_APPLICATION
        )
        _ledger.update(conn=conn, pid=os.getpid())
    return conn  # type: ignore[no-any-return]


def ledger(sql: str, params: dict[str, Any]) -> None:
    """One autocommitted statement; a broken connection is dropped so the next call reconnects.

    Its error propagates: the handler fails, which is what a database outage should do.
    """
    try:
        _connection().execute(sql, params)
    except psycopg.Error:
        conn = _ledger.pop("conn", None)
        if conn is not None:
            conn.close()
        raise


def _mark(event: Event, kind: str) -> None:
    ledger(
        "INSERT INTO chaos_ledger (event_id, attempt, kind, pid) VALUES "
        "(%(e)s, %(a)s, %(k)s, %(p)s)",
        {"e": event.id, "a": event.attempt, "k": kind, "p": os.getpid()},
    )


def behave(event: Event, session: Session) -> None:
    data = event.event_data
    _mark(event, "start")
    if event.attempt <= int(data.get("kill_until", 0)):
        os.kill(os.getpid(), signal.SIGKILL)
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    if event.attempt <= int(data.get("fail_until", 0)):
        _mark(event, "scripted")
        raise RuntimeError(f"scripted failure of attempt {event.attempt}")
    if data.get("effect"):
        _mark(event, "effect")  # naive: repeats whenever the attempt is run again
        ledger(
            "INSERT INTO chaos_effects_keyed (event_id) VALUES (%(e)s) ON CONFLICT DO NOTHING",
            {"e": event.id},
        )
        if data.get("sleep_after_effect"):
            time.sleep(float(data["sleep_after_effect"]))
    session.execute(
        text("INSERT INTO chaos_completions (event_id, attempt, pid) VALUES (:e, :a, :p)"),
        {"e": event.id, "a": event.attempt, "p": os.getpid()},
    )


@handler(MODULES[0], "*")
def orders(event: Event, session: Session) -> None:
    behave(event, session)


@handler(MODULES[1], "*")
def billing(event: Event, session: Session) -> None:
    behave(event, session)


@handler(MODULES[2], "*")
def shipping(event: Event, session: Session) -> None:
    behave(event, session)


@handler(ORDERED_MODULE, "*", ordered=True)
def stock(event: Event, session: Session) -> None:
    behave(event, session)


@handler(POISON_MODULE, "*")
def poison(event: Event, session: Session) -> None:
    behave(event, session)
