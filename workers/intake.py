"""The worker's consumer, refusing every message that is not a well-formed bus task.

Celery's consumer runs whatever task a message names (its built-ins too, when a foreign client
sends them), hands hand-made argument lists to the task, and lets some malformed messages
raise out of its loop. This consumer checks each delivery first (:func:`bus.broker.deadletter.
check_task_message`: the task's name, its batch of event ids, no kwargs or callbacks, every header
and property Celery reads, by exact type and size, and an ``eta`` within the bus's longest
delay); a refused message is kept on ``<queue>.dead``, logged, counted and acknowledged, and
the worker goes on. The check runs in the worker's main process, before any pool process sees
the message. Should Celery still raise while it turns a message into a task request (a field
the check does not know of, in some later Celery), that message is refused the same way:
in Celery's loop the exception would be "Unrecoverable" and end the worker, and the message,
unacknowledged, would end the next one too.

Where a refused message goes: on Redis, pushed as received onto the ``<queue>.dead`` list. On
RabbitMQ (and any other transport) it is republished, body and headers unchanged, to a durable
``<queue>.dead`` queue through the default exchange, then acknowledged. Not a dead-letter
exchange: that needs ``x-dead-letter-exchange`` among the queue's declaration arguments, and the
module queues already exist without it (declared by Celery, by the API's sends and by every
worker); RabbitMQ refuses a redeclaration with other arguments (PRECONDITION_FAILED), so
existing deployments would have to delete their queues first. An operator policy
(``rabbitmqctl set_policy … dead-letter-exchange``) can still add one; it would only see
messages this consumer could not store.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from celery.worker import heartbeat
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.heart import Heart as HeartStep
from kombu.entity import Queue
from kombu.message import Message

from bus.broker import deadletter
from bus.broker.celery_app import BOUNDS_SETTING
from bus.broker.celery_message import DEFAULT_BOUNDS, Bounds

log = logging.getLogger(__name__)

CONSUMER = f"{__name__}:Consumer"
"""For ``WorkController(consumer_cls=...)``."""
_UNKNOWN_QUEUE = "unknown"


class _Heart(heartbeat.Heart):  # type: ignore[misc]
    """Celery's ``worker-heartbeat`` event (Flower's), sent once: Celery retries it until the
    broker answers, in the worker's event loop, so a worker cut from RabbitMQ stopped there
    for the whole partition and never saw its consumer's connection die (tests/faults). An
    event that fails is kept by the dispatcher (``buffer_while_offline``) and sent later."""

    def _send(self, event: str, retry: bool = False) -> Any:
        return super()._send(event, retry=False)


class Heart(HeartStep):  # type: ignore[misc]
    def start(self, c: Any) -> None:
        c.heart = _Heart(c.timer, c.event_dispatcher, self.heartbeat_interval)
        c.heart.start()


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer with :func:`bus.broker.deadletter.check_task_message` in front."""

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        default_steps = [
            f"{__name__}:Heart" if step == "celery.worker.consumer.heart:Heart" else step
            for step in CeleryConsumer.Blueprint.default_steps
        ]

    _loop_thread: int | None = None

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        self._loop_thread = threading.get_ident()  # Celery's loop asks for it as it starts
        handle = super().create_task_handler(*args, **kwargs)
        bounds = self.app.conf.get(BOUNDS_SETTING) or DEFAULT_BOUNDS
        # A lost connection is Celery's to recover from (it reconnects and the message returns).
        passes = (*self.connection_errors, *self.channel_errors)

        def on_task_received(message: Message) -> Any:
            reason = _check(message, bounds)
            if reason is not None:
                return self.refuse(message, reason)
            try:
                return handle(message)
            except passes:
                raise
            except Exception as exc:
                return self.on_celery_error(message, exc)

        return on_task_received

    def call_soon_ack(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        """Acknowledge at once on the loop's own thread. Found by the network suite on RabbitMQ
        (solo pool): Celery queues the ack for the hub's next turn, and kombu polls before a
        callback queued by another queued one (the read that ran the task) runs, for as long as
        its next timer (~2 s); with one message prefetched the broker sends no other until the
        ack, so a worker took ~2 wake-ups a second and the queues grew (kombu PR #1587). Acks
        from other threads (a thread pool) still go through the hub: py-amqp is not
        thread-safe."""
        driver = getattr(getattr(self.connection, "transport", None), "driver_type", None)
        if self.hub is None or threading.get_ident() != self._loop_thread or driver != "amqp":
            # (Redis acks through the hub as Celery does: an ack that meets a dead connection
            # then fails the loop, which reconnects at once; swallowed here it cost a half-open
            # connection ~10 s more before the consumer noticed.)
            return super().call_soon_ack(p, *args, **kwargs)
        try:
            p(*args, **kwargs)
        except Exception:
            log.exception("acknowledging a message failed")
        return p

    def on_celery_error(self, message: Message, exc: Exception) -> None:
        """Celery raised taking ``message`` (outside any handler): refuse it, keep the worker."""
        log.error("Celery could not take a message: %s: %s", type(exc).__name__, exc, exc_info=exc)
        for request in list(worker_state.requests.values()):  # what it registered, if anything
            if getattr(request, "message", None) is message:
                worker_state.task_ready(request)
        if message.acknowledged:  # it was settled before the error: nothing to keep
            return
        self.refuse(message, f"Celery raised {type(exc).__name__}: {exc}"[:160])

    # Celery's own refusals drop the message; keep it instead (the check refuses these first).
    def on_unknown_message(self, body: Any, message: Message) -> None:
        self.refuse(message, "not a Celery task message")

    def on_unknown_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.refuse(message, f"unknown task: {exc}"[:160])

    def on_invalid_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.refuse(message, f"invalid task: {type(exc).__name__}: {exc}"[:160])

    def on_decode_error(self, message: Message, exc: BaseException) -> None:
        # A body kombu could not decode (a bad compression header, content kombu refuses):
        # Celery would log its traceback and drop it; keep it instead.
        self.refuse(message, f"undecodable: {type(exc).__name__}: {exc}"[:160])

    def refuse(self, message: Message, reason: str) -> None:
        """Keep ``message`` on its queue's dead-letter queue, then acknowledge it."""
        queue = self._queue_of(message)
        channel = message.channel
        raw = _raw(message)
        try:
            if hasattr(channel, "dead_letter"):  # the bus's Redis channel: LPUSH as received
                channel.dead_letter(queue, raw, reason)
            else:
                self._republish(message, queue, reason)
                deadletter.reject(queue, raw, reason, deadletter.dead_letter_queue(queue))
        except Exception as exc:  # the store failed: drop it rather than loop on it
            log.warning("dead-letter store failed: %s: %s", type(exc).__name__, exc)
            deadletter.reject(queue, raw, reason, None)
            message.reject_log_error(log, self.connection_errors, requeue=False)  # type: ignore[no-untyped-call]
            return
        message.ack_log_error(log, self.connection_errors)  # type: ignore[no-untyped-call]

    def _queue_of(self, message: Message) -> str:
        """The queue it came from, among this worker's (so the label and list are bounded)."""
        ours = [q.name for q in getattr(self.task_consumer, "queues", None) or ()]
        routing_key = (message.delivery_info or {}).get("routing_key")
        if routing_key in ours:
            return str(routing_key)
        return ours[0] if len(ours) == 1 else _UNKNOWN_QUEUE

    def _republish(self, message: Message, queue: str, reason: str) -> None:
        dead = deadletter.dead_letter_queue(queue)
        body = message.body
        headers = dict(message.headers or {})
        headers[deadletter.REASON_HEADER] = reason
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                body if isinstance(body, bytes | str) else b"",
                exchange="",
                routing_key=dead,
                declare=[Queue(dead, durable=True)],  # type: ignore[no-untyped-call]
                content_type=message.content_type or "application/octet-stream",
                content_encoding=message.content_encoding or "binary",
                headers=headers,
                retry=True,
                retry_policy={"max_retries": 2},
            )


def _check(message: Message, bounds: Bounds) -> str | None:
    try:
        return deadletter.check_task_message(
            message.headers,
            message.content_type,
            message.content_encoding,
            message.body,
            bounds=bounds,
        )
    except Exception as exc:  # a check that raises must not take the loop down either
        return f"unreadable message: {type(exc).__name__}"


def _raw(message: Message) -> bytes:
    """The message as received: kombu's envelope on virtual transports, else its body."""
    envelope = getattr(message, "_raw", None)
    if isinstance(envelope, dict):
        return json.dumps(envelope, separators=(",", ":")).encode()
    body = message.body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return body if isinstance(body, bytes) else repr(body).encode()
