"""Send after commit: sends are collected during a unit of work and made once it commits."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bus import repository
from bus.db import transaction
from bus.queues import PROCESS_EVENT_TASK, queue_name

log = logging.getLogger(__name__)
_KEY = "eventbus.dispatches"
REQUEST_ID_HEADER = "eventbus_request_id"
LOST_HEADER = "eventbus_lost"
"""Marks a delivery that may follow one that died: its attempt is counted before it runs
(workers/tasks.py reads it under the same name)."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One message to send: process this event on its module's queue."""

    event_id: uuid.UUID
    target_module: str
    countdown: float | None = None
    request_id: str | None = None
    lost: str | None = None
    """Why the delivery before this one may have died, if it may (sent as ``LOST_HEADER``)."""


def schedule(session: Session, dispatch: Dispatch) -> None:
    """Queue a send for when the session's transaction has committed."""
    session.info.setdefault(_KEY, []).append(dispatch)


def take_scheduled(session: Session) -> list[Dispatch]:
    """The sends collected in a session, removed from it (dropped on rollback by the caller)."""
    scheduled: list[Dispatch] = session.info.pop(_KEY, [])
    return scheduled


class Dispatcher:
    """Hands messages to the broker; a send that fails is unstamped for the relay to retry.

    After a failed send the broker is left alone for ``cooldown`` seconds: sends in that time
    fail at once, so requests do not each wait out a dead broker's timeout.
    """

    def __init__(
        self,
        celery_app: Any,
        sessions: sessionmaker[Session],
        queue_prefix: str,
        cooldown: float = 1.0,
    ) -> None:
        self._app = celery_app
        self._sessions = sessions
        self._prefix = queue_prefix
        self._cooldown = cooldown
        self._down_until = 0.0

    def send(self, dispatches: Sequence[Dispatch]) -> list[uuid.UUID]:
        """Send each message; returns the ids whose send failed (already unstamped if possible).

        The first failure ends the batch: the broker is most likely down, and each further try
        could wait out a connect timeout while the relay will send them all anyway.
        """
        failed: list[uuid.UUID] = []
        for index, dispatch in enumerate(dispatches):
            if time.monotonic() < self._down_until or not self._send_one(dispatch):
                failed = [d.event_id for d in dispatches[index:]]
                break
        if failed:
            try:
                with transaction(self._sessions) as session:
                    repository.mark_unsent(session, failed)
            except Exception:
                # The stamp stays; the relay re-sends once the lease runs out.
                log.exception("could not unstamp %d unsent events", len(failed))
        return failed

    def _send_one(self, dispatch: Dispatch) -> bool:
        try:
            self._app.send_task(
                PROCESS_EVENT_TASK,
                args=[str(dispatch.event_id)],
                queue=queue_name(dispatch.target_module, self._prefix),
                countdown=dispatch.countdown,
                headers=_headers(dispatch),
                retry=False,
            )
        except Exception as exc:
            self._down_until = time.monotonic() + self._cooldown
            log.warning("send of event %s failed: %s", dispatch.event_id, exc)
            return False
        return True

    def send_scheduled(self, session: Session) -> list[uuid.UUID]:
        """Send what a committed session scheduled."""
        return self.send(take_scheduled(session))


def _headers(dispatch: Dispatch) -> dict[str, str | None]:
    headers = {REQUEST_ID_HEADER: dispatch.request_id}
    if dispatch.lost is not None:
        headers[LOST_HEADER] = dispatch.lost
    return headers
