"""Callbacks that run once a session's transaction has committed, and never if it rolls back.

For what must only be told about durable work: counting a publish in the metrics, logging it.
The caller that commits (the request's session dependency, a task's unit of work) needs to know
nothing about them. A callback registered inside a SAVEPOINT is dropped if that savepoint rolls
back, and waits for the outermost commit otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)
_KEY = "eventbus.on_commit"

Callback = Callable[[], None]


def on_commit(session: Session, callback: Callback) -> None:
    """Run ``callback`` after the session's current transaction commits."""
    scope = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(_KEY, []).append((scope, callback))


@event.listens_for(Session, "after_commit")
def _run(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT was released: the transaction around it may still roll back
    pending: list[tuple[SessionTransaction | None, Callback]] = session.info.pop(_KEY, [])
    for _scope, callback in pending:
        try:
            callback()
        except Exception:
            # The work is committed; a failing counter or log line must not turn it into an error.
            log.exception("after-commit callback %r failed", callback)


@event.listens_for(Session, "after_soft_rollback")
def _drop(session: Session, previous_transaction: SessionTransaction) -> None:
    pending: list[tuple[SessionTransaction | None, Callback]] = session.info.get(_KEY, [])
    if not pending:
        return
    kept = [(s, c) for s, c in pending if not _within(s, previous_transaction)]
    if kept:
        session.info[_KEY] = kept
    else:
        session.info.pop(_KEY, None)


def _within(scope: SessionTransaction | None, ended: SessionTransaction) -> bool:
    """Whether ``scope`` is ``ended`` or a transaction nested inside it."""
    if ended.parent is None:
        return True  # the outermost transaction rolled back: everything goes
    while scope is not None:
        if scope is ended:
            return True
        scope = scope.parent
    return False
