"""Broker messages the bus refuses: what a well-formed one is, and where refused ones go.

Anyone who can write to the broker can put anything on a module's queue. Whatever it is, the
worker must go on consuming: a message that is not a kombu envelope (checked in the Redis
channel, :mod:`bus.broker.transport`) or not a well-formed ``eventbus.process_events`` call
with a batch of event ids (or ``eventbus.process_event`` with one, as releases before batches
sent; checked by the worker's consumer, ``workers/intake.py``, before anything runs), with
every header and property Celery reads of its exact type (:mod:`bus.broker.celery_message`),
is logged on one line,
counted in ``eventbus_broker_messages_rejected_total{queue}`` and kept, as received, on the
queue's dead-letter queue ``<queue>.dead`` (on Redis a list capped at :data:`DEAD_LETTER_CAP`
items: the newest are kept). ``eventbus dead-letters`` lists and purges them.

The checks are pure functions of what arrived, so a listing recomputes each item's reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from bus.broker import celery_message
from bus.broker.queues import PROCESS_EVENT_TASK, PROCESS_EVENTS_TASK
from bus.observability import metrics

log = logging.getLogger(__name__)

DEAD_SUFFIX = ".dead"
DEAD_LETTER_CAP = 10_000
"""Items kept per dead-letter list (LTRIM after each push): bounded memory on a broker that
runs with ``noeviction``, enough to study a flood."""
MAX_BODY_BYTES = 256 * 1024
"""A batch of MAX_BATCH_IDS ids is ~200 KB; larger bodies are refused undecoded."""
MAX_ENVELOPE_BYTES = 2 * MAX_BODY_BYTES
"""The body base64-encoded (4/3 of it) and the headers."""
PREVIEW_BYTES = 200
REASON_HEADER = "x-eventbus-rejected"
"""On brokers without raw lists the refused message is republished with its reason here."""
REASON_CHARS = 160

_JSON = "application/json"


def dead_letter_queue(queue: str) -> str:
    """The queue (on Redis: the list) that keeps what was refused on ``queue``."""
    return f"{queue}{DEAD_SUFFIX}"


def preview(raw: bytes | str) -> str:
    """The first bytes of a payload as a one-line, escaped ``repr``: safe in any log line."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    return repr(data[:PREVIEW_BYTES]) + ("…" if len(data) > PREVIEW_BYTES else "")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}…"


def reject(queue: str, raw: bytes | str, reason: str, kept: str | None) -> None:
    """Log and count one refused message; ``kept`` names where it was stored, None if nowhere."""
    metrics.count_broker_rejected(queue)
    where = f"kept on {kept}" if kept else "NOT kept (dead-letter store failed)"
    log.warning(
        "rejected a message on %s: %s; %s; %d bytes: %s",
        queue,
        reason[:REASON_CHARS],
        where,
        len(raw),
        preview(raw),
    )


# --- the kombu envelope (Redis and the other virtual transports) ----------------------------


def decode_envelope(item: bytes | str) -> dict[str, Any] | str:
    """A list item as kombu's virtual ``Message`` will read it, or why it cannot be one.

    Checks every field ``Message()`` and the consumer touch before a task exists, so a hostile
    item is refused here instead of raising in the transport (which kills the worker).
    """
    if isinstance(item, bytes):
        if len(item) > MAX_ENVELOPE_BYTES:
            return f"envelope of {len(item)} bytes is larger than {MAX_ENVELOPE_BYTES}"
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError:
            return "envelope is not UTF-8"
    else:
        text = item
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return "envelope is not JSON"
    if not isinstance(payload, dict):
        return f"envelope is a JSON {type(payload).__name__}, not an object"
    why = envelope_problem(payload)
    return payload if why is None else why


def envelope_problem(payload: dict[str, Any]) -> str | None:
    """Why a decoded object is not a kombu virtual-transport envelope, or None."""
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "envelope has no properties object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return f"delivery_tag {_short(tag)} is not a short string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        return "envelope has no delivery_info object"
    for key in ("exchange", "routing_key"):
        if not isinstance(info.get(key, ""), str):
            return f"delivery_info {key} is not a string"
    why = celery_message.fields_problem(
        "property", properties, celery_message.PROPERTIES, celery_message.OTHER_PROPERTY
    )
    if why:
        return why
    headers = payload.get("headers")
    if not isinstance(headers, dict | None):
        return "headers are not an object"
    if headers and headers.get("compression"):
        return "compressed bodies are refused"
    for key in ("content-type", "content-encoding"):
        if not isinstance(payload.get(key), str | None):
            return f"{key} is not a string"
    body = payload.get("body")
    if not isinstance(body, str | None):
        return "body is not a string"
    if properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body or "", validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    return None


# --- the task message (any broker) ----------------------------------------------------------

ArgsCheck = Callable[[Any], str | None]


def one_event_id(args: Any) -> str | None:
    """``[event_id]``: what ``bus.broker.dispatch`` sends today."""
    if not (isinstance(args, list) and len(args) == 1):
        return f"args {_short(args)} are not exactly one event id"
    return _event_id_problem(args[0])


def _event_id_problem(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) != 36:
        return f"event id {_short(value)} is not a UUID string"
    try:
        uuid.UUID(value)
    except ValueError:
        return f"event id {_short(value)} is not a UUID string"
    return None


MAX_BATCH_IDS = 5000
"""The most ids a batch may carry (``EVENTBUS_DISPATCH_BATCH_SIZE`` is capped at it)."""


def event_id_batch(args: Any) -> str | None:
    """``[[event_id, …]]``: what ``bus.broker.dispatch`` sends since batches, 1 to 5000 ids."""
    if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], list)):
        return f"args {_short(args)} are not one list of event ids"
    ids = args[0]
    if not 1 <= len(ids) <= MAX_BATCH_IDS:
        return f"a batch of {len(ids)} event ids is not 1 to {MAX_BATCH_IDS}"
    for value in ids:
        why = _event_id_problem(value)
        if why:
            return why
    return None


ARGS_SHAPES: dict[str, ArgsCheck] = {
    PROCESS_EVENT_TASK: one_event_id,
    PROCESS_EVENTS_TASK: event_id_batch,
}
"""The bus's tasks and the shape of each one's args; only these run on the bus's queues."""


def check_args(args: Any, kwargs: Any, task: str = PROCESS_EVENT_TASK) -> str | None:
    """Why a call's arguments are not those of the bus's ``task``, or None."""
    if kwargs not in ({}, None):
        return f"unexpected kwargs {_short(kwargs)}"
    return ARGS_SHAPES[task](args)


def check_task_message(
    headers: Mapping[str, Any] | None,
    content_type: str | None,
    content_encoding: str | None,
    body: bytes | str | None,
    *,
    now: datetime | None = None,
    bounds: celery_message.Bounds = celery_message.DEFAULT_BOUNDS,
) -> str | None:
    """Why a delivered message is not a well-formed ``eventbus.process_event`` call, or None.

    Only the bus's own task runs on its queues: Celery's built-ins (``celery.backend_cleanup``,
    ``celery.chord_unlock``…) and any other name are refused, as are callbacks in the body and
    every header :mod:`bus.broker.celery_message` does not describe; ``bounds`` are what the bus's
    own messages carry at most (a later ``eta``, a longer time limit are refused).
    """
    if not isinstance(headers, Mapping):
        return "no headers: not a Celery task message"
    task = headers.get("task")
    if not isinstance(task, str) or task not in ARGS_SHAPES:  # a dict would not hash
        if task is None:
            return "no task header: not a Celery protocol 2 task message"
        return f"task {_short(task)} is not a bus task ({', '.join(ARGS_SHAPES)})"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
        return f"task id {_short(task_id)} is not a short string"
    others = {k: v for k, v in headers.items() if k not in ("task", "id")}
    why = celery_message.fields_problem("header", others, celery_message.HEADERS)
    if why:
        return why
    why = celery_message.limits_problem(headers, now or datetime.now(UTC), bounds)
    if why:
        return why
    if content_type != _JSON:
        return f"content type {_short(content_type)} is not {_JSON}"
    if content_encoding not in (None, "utf-8"):
        return f"content encoding {_short(content_encoding)} is not utf-8"
    data = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body or b""
    if len(data) > MAX_BODY_BYTES:
        return f"body of {len(data)} bytes is larger than {MAX_BODY_BYTES}"
    try:
        decoded = json.loads(data)
    except (ValueError, RecursionError):
        return "body is not JSON"
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[2], dict)):
        return "body is not [args, kwargs, embed]"
    args, kwargs, embed = decoded
    why = celery_message.fields_problem("body", embed, celery_message.EMBED)
    if why:
        return f"{why} (no callbacks, chain or chord on the bus)"
    return check_args(args, kwargs, task)


def check_raw(
    item: bytes,
    *,
    now: datetime | None = None,
    bounds: celery_message.Bounds = celery_message.DEFAULT_BOUNDS,
) -> str | None:
    """Why a raw Redis list item would be refused, or None (for listings and tests)."""
    envelope = decode_envelope(item)
    if isinstance(envelope, str):
        return envelope
    body = envelope.get("body")
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body or "")
    return check_task_message(
        envelope.get("headers"),
        envelope.get("content-type"),
        envelope.get("content-encoding"),
        body,
        now=now,
        bounds=bounds,
    )
