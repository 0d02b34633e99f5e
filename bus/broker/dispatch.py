"""Messages to the broker: what one says (``Dispatch``) and who sends it (``Dispatcher``).

Every message is a wake-up for its module's workers, which claim what is ready from the
in-flight set (``bus.storage.claim_store``); the ids it names are hints (and carry their
traces). On Redis a message is not pushed while ``wake_bound`` wait on its queue already.

A unit of work (``bus.uow``) collects its sends and hands them here once it has committed."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus.broker.queues import PROCESS_EVENTS_TASK, WAKE_BOUND_HEADER, queue_name
from bus.observability.tracing import Sender

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "eventbus_request_id"
"""Carries the publishing request's id into the worker's logs."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One event to put on its module's queue."""

    event_id: uuid.UUID
    target_module: str
    request_id: str | None = None
    countdown: float | None = None
    """Seconds the message waits before it runs (a retry's delay)."""
    trace: str | None = None
    """With tracing on, the ``traceparent`` of the span it was asked for in, when that is not
    the span the unit of work commits in (a group commit's other requests, a retry)."""

    @property
    def alone(self) -> bool:
        """A delayed wake-up (a retry's) travels on its own: a delay holds back no other."""
        return self.countdown is not None


@dataclass(frozen=True, slots=True)
class Message:
    """One broker message: ``eventbus.process_events`` with the ids of one module."""

    target_module: str
    dispatches: tuple[Dispatch, ...]

    @property
    def event_ids(self) -> list[str]:
        return [str(d.event_id) for d in self.dispatches]

    @property
    def headers(self) -> dict[str, str | None]:
        first = self.dispatches[0]
        headers: dict[str, str | None] = {}
        if len(self.dispatches) == 1:  # a batch's request ids are on its rows
            headers[REQUEST_ID_HEADER] = first.request_id
        return headers


def group(dispatches: Sequence[Dispatch], max_ids: int) -> list[Message]:
    """The messages that carry ``dispatches``: those of one module together, at most
    ``max_ids`` a message, in order; one that must travel :attr:`~Dispatch.alone`, alone."""
    messages: list[Message] = []
    open_batches: dict[str, list[Dispatch]] = {}
    for dispatch in dispatches:
        if dispatch.alone:
            messages.append(Message(dispatch.target_module, (dispatch,)))
            continue
        batch = open_batches.setdefault(dispatch.target_module, [])
        batch.append(dispatch)
        if len(batch) >= max_ids:
            messages.append(Message(dispatch.target_module, tuple(batch)))
            del open_batches[dispatch.target_module]
    messages.extend(Message(module, tuple(batch)) for module, batch in open_batches.items())
    return messages


class Dispatcher:
    """Hands messages to the broker; a send that fails is left to the workers' polls.

    After a failed send the broker is left alone for ``cooldown`` seconds: sends in that time
    fail at once, so requests do not each wait out a dead broker's timeout. With a ``tracer``
    (tracing on) each message is sent in a span of its own and carries its trace context.
    """

    def __init__(
        self,
        celery_app: Any,
        sessions: sessionmaker[Session],
        queue_prefix: str,
        max_ids: int = 500,
        cooldown: float = 1.0,
        tracer: Sender | None = None,
        wake_bound: int | None = None,
    ) -> None:
        self._app = celery_app
        self._sessions = sessions
        self._prefix = queue_prefix
        self._max_ids = max_ids
        self._cooldown = cooldown
        self._down_until = 0.0
        self._tracer = tracer
        self._bound: dict[str, int] = {WAKE_BOUND_HEADER: wake_bound} if wake_bound else {}

    def send(self, dispatches: Sequence[Dispatch]) -> list[uuid.UUID]:
        """Send them, grouped (:func:`group`); returns the ids whose send failed (their
        workers' polls find the events anyway).

        The first failure ends the sending: the broker is most likely down, and each further
        try could wait out a connect timeout while the relay will send them all anyway.
        """
        messages = group(dispatches, self._max_ids)
        # Tracing off: one check per call; the dispatches' ``trace`` stays unread.
        origin = self._tracer.default_origin() if self._tracer is not None else None
        failed: list[uuid.UUID] = []
        for index, message in enumerate(messages):
            if time.monotonic() < self._down_until or not self._send_one(message, origin):
                failed = [d.event_id for m in messages[index:] for d in m.dispatches]
                break
        return failed

    def wake(self, module: str, hint: uuid.UUID) -> bool:
        """A bare wake-up for ``module`` (naming ``hint``, an event ready there), outside any
        trace: a worker's poll or its own fan-out, not an event's send. True once sent."""
        if time.monotonic() < self._down_until:
            return False
        message = Message(module, (Dispatch(hint, module),))
        return self._publish(message, queue_name(module, self._prefix), self._bound) is None

    def _send_one(self, message: Message, origin: str | None) -> bool:
        queue = queue_name(message.target_module, self._prefix)
        headers = {**message.headers, **self._bound}
        if self._tracer is None:
            return self._publish(message, queue, headers) is None
        ids = message.event_ids
        origins = [d.trace or origin for d in message.dispatches]
        with self._tracer.sending(queue, message.target_module, ids, origins) as span:
            error = self._publish(message, queue, {**headers, **span.headers})
            if error is not None:
                span.failed(error)
        return error is None

    def _publish(
        self, message: Message, queue: str, headers: Mapping[str, Any]
    ) -> Exception | None:
        """Hand one message to the broker; returns why it failed, None once it is sent."""
        try:
            self._app.send_task(
                PROCESS_EVENTS_TASK,
                args=[message.event_ids],
                queue=queue,
                countdown=message.dispatches[0].countdown,
                headers=headers,
                retry=False,
            )
        except Exception as exc:
            self._down_until = time.monotonic() + self._cooldown
            log.warning(
                "send of %d events to %s failed: %s",
                len(message.dispatches),
                message.target_module,
                exc,
            )
            return exc
        return None
