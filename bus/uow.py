"""The unit of work: one transaction at an edge, with what must happen once it has committed.

Made only at the two edges, the API request (``api.deps.Work``) and the worker delivery
(``workers.tasks``), and handed to every service and attempt function that writes. It holds:

* the session, whose transaction it alone commits or rolls back;
* the sends (:meth:`UnitOfWork.send`): messages to hand to the broker once the rows they name
  are durable. A send that fails is unstamped so the relay sends it (``Dispatcher.send``);
* the after-commit callbacks (:meth:`UnitOfWork.after_commit`): metrics and log lines that must
  only tell of committed work.

:meth:`UnitOfWork.savepoint` scopes both to a SAVEPOINT: a handler's writes and the sends or
callbacks it made are kept or dropped together. Nothing travels through ``session.info`` except
:data:`LENT` (a handler holds the session; see :func:`forbid_commit_while_lent`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import event

from bus.broker.dispatch import Dispatch, Dispatcher

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

Callback = Callable[[], None]

LENT = "eventbus.lent_to_handler"
"""The one ``session.info`` flag: set while a handler holds the session (see
:func:`forbid_commit_while_lent`)."""


class HandlerMisuse(RuntimeError):
    """A handler committed or rolled back the session it was lent."""


@dataclass(slots=True, eq=False)
class _Scope:
    """What the transaction, or one savepoint of it, has asked for after the commit."""

    sends: list[Dispatch] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)

    def take(self, inner: _Scope) -> None:
        self.sends.extend(inner.sends)
        self.callbacks.extend(inner.callbacks)


class Savepoint:
    """A SAVEPOINT of a unit of work, begun when made (so a failure to begin it is the
    database's, raised to the caller, not the block's); use it as a context manager.

    On an exception in the block its writes, sends and callbacks are dropped and the exception
    propagates; otherwise they join the enclosing transaction. ``aborted`` says the block ended
    the whole transaction itself (a handler's commit or rollback): everything of it was rolled
    back, its locks included, and :class:`HandlerMisuse` is raised if nothing else was.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._nested = uow.session.begin_nested()
        self._scope = _Scope()
        self.aborted = False

    def __enter__(self) -> Savepoint:
        self._uow._scopes.append(self._scope)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        uow = self._uow
        uow._scopes.pop()  # savepoints nest: this one's scope is the innermost
        if exc is None and self._nested.is_active:
            self._nested.commit()  # flushes: a constraint the block's writes break fails here
            uow._scopes[-1].take(self._scope)
            return
        if self._nested.is_active:
            self._nested.rollback()
            return
        self.aborted = True  # the block ended the transaction: nothing of it is left to keep
        uow.rollback()
        if exc is None:
            raise HandlerMisuse("a handler must not commit or roll back its session")


class UnitOfWork:
    """A session's transaction and its after-commit work; use it as a context manager.

    Leaving the block rolls back whatever was not committed and closes the session.
    """

    def __init__(self, session: Session, dispatcher: Dispatcher) -> None:
        self.session = session
        self._dispatcher = dispatcher
        self._scopes: list[_Scope] = [_Scope()]

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.rollback()
        finally:
            self.session.close()

    # --- what to do after the commit ---------------------------------------------------

    def send(self, dispatch: Dispatch) -> None:
        """Hand ``dispatch`` to the broker once the transaction has committed."""
        self._scopes[-1].sends.append(dispatch)

    def after_commit(self, callback: Callback) -> None:
        """Run ``callback`` once the transaction has committed; never if it rolls back."""
        self._scopes[-1].callbacks.append(callback)

    # --- the transaction -----------------------------------------------------------------

    def savepoint(self) -> Savepoint:
        """A SAVEPOINT, begun now: the block's writes and the sends or callbacks it asked for
        are kept or dropped together (see :class:`Savepoint`)."""
        return Savepoint(self)

    @contextmanager
    def lent(self) -> Iterator[None]:
        """The session lent to a handler, which may not commit it (see
        :func:`forbid_commit_while_lent`)."""
        self.session.info[LENT] = True
        try:
            yield
        finally:
            self.session.info.pop(LENT, None)

    def commit(self) -> list[uuid.UUID]:
        """Commit, then run the callbacks, then make the sends; returns the ids whose send
        failed (unstamped for the relay). The unit of work can be used again afterwards."""
        self.session.commit()
        done = self._reset()
        for callback in done.callbacks:
            try:
                callback()
            except Exception:
                # The work is committed: a failing counter or log line must not undo that.
                log.exception("after-commit callback %r failed", callback)
        if not done.sends:
            return []
        return self._dispatcher.send(done.sends)

    def rollback(self) -> None:
        """Roll back; the sends and callbacks asked for so far are dropped."""
        self.session.rollback()
        self._reset()

    def _reset(self) -> _Scope:
        done = self._scopes[0]
        for inner in self._scopes[1:]:
            done.take(inner)
        self._scopes = [_Scope()]
        return done


def forbid_commit_while_lent(session: Session) -> None:
    """``before_commit`` guard: a handler's commit would release the event's claim and split its
    writes from the status; only savepoints of its own may be committed."""
    if session.info.get(LENT) and not session.in_nested_transaction():
        raise HandlerMisuse("a handler must not commit its session: the bus commits it")


def guard(sessions: sessionmaker[Session]) -> None:
    """Install :func:`forbid_commit_while_lent` on a session factory (once)."""
    if not event.contains(sessions, "before_commit", forbid_commit_while_lent):
        event.listen(sessions, "before_commit", forbid_commit_while_lent)
