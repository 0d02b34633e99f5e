"""What a Celery message to the bus may carry: every header and property Celery or kombu reads
before a task runs, with its exact type and size, checked recursively.

Celery's worker trusts these fields: it hashes ``stamped_headers`` (``[[]]`` raised TypeError in
``Request.revoked`` and killed the worker, on every restart), feeds ``timelimit`` to the pool (a
limit of 1 ms kills a pool child), keeps a far ``eta`` in memory until it is due, copies every
header into the task's context (a ``chain`` header there sends tasks from the worker). So each
field is described here by what the bus and Celery 5.7 send, no wider; a header neither of them
sends is refused. The checks are pure: they take the time and the worker's bounds as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dateutil.parser import isoparse  # type: ignore[import-untyped]  # what Celery parses with

from bus.observability import tracing

Check = Callable[[Any], str | None]
"""Why a value does not fit, or None."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """What the bus's own messages carry at most, from the worker's settings
    (``bus.broker.celery_app.message_bounds``); the defaults are those of the default settings."""

    longest_delay: float = 300.0
    """Seconds: the longest countdown the bus puts on a message (its retry cap)."""
    time_limit: float = 300.0
    """Seconds: the hard time limit of a run; a message sent from a task carries it."""


DEFAULT_BOUNDS = Bounds()


ETA_MARGIN_SECONDS = 60.0
"""Past the bus's longest delay, what an ``eta`` may add: clock skew between hosts."""
EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
"""An earlier ``eta`` would not convert to a timestamp (Celery drops such a message)."""
MAX_EXPIRES = timedelta(days=366)
"""The bus sends no ``expires``; a later one is refused before any date arithmetic overflows."""
ID_CHARS = 255
REPR_CHARS = 8192
"""``argsrepr``: Celery cuts the repr at 1024 characters; room for non-ASCII escapes."""
MAX_STAMPS = 32
MIN_TIME_LIMIT = 1.0


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}…"


def text(max_chars: int) -> Check:
    """None or a string of at most ``max_chars`` characters."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if type(value) is not str:
            return f"{_short(value)} is not a string"
        if len(value) > max_chars:
            return f"is longer than {max_chars} characters"
        return None

    return check


def integer(low: int, high: int) -> Check:
    """None or an int (not a bool) from ``low`` to ``high``."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if type(value) is not int or not low <= value <= high:
            return f"{_short(value)} is not an integer from {low} to {high}"
        return None

    return check


def number(value: Any) -> str | None:
    """None or a finite int or float (not a bool)."""
    if value is None or type(value) is int:
        return None
    if type(value) is float and math.isfinite(value):
        return None
    return f"{_short(value)} is not a finite number"


def flag(value: Any) -> str | None:
    """None or a bool."""
    return None if value is None or type(value) is bool else f"{_short(value)} is not a boolean"


def exactly(*allowed: Any) -> Check:
    """One of ``allowed``, compared by type and value (``[None, None]``, never ``[0, 0]``)."""

    def check(value: Any) -> str | None:
        if any(type(value) is type(a) and value == a and _same(value, a) for a in allowed):
            return None
        return f"{_short(value)} is not {' or '.join(repr(a) for a in allowed)}"

    return check


def _same(value: Any, allowed: Any) -> bool:
    if isinstance(allowed, list):
        return all(type(v) is type(a) for v, a in zip(value, allowed, strict=True))
    return True


def list_of(item: Check, max_items: int) -> Check:
    """None or a list of at most ``max_items`` values, each passing ``item``."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if type(value) is not list:
            return f"{_short(value)} is not a list"
        if len(value) > max_items:
            return f"has more than {max_items} items"
        for element in value:
            why = item(element)
            if why:
                return f"item {why}"
        return None

    return check


def map_of(key: Check, value_check: Check, max_items: int) -> Check:
    """None or an object of at most ``max_items`` entries, keys and values checked."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if type(value) is not dict:
            return f"{_short(value)} is not an object"
        if len(value) > max_items:
            return f"has more than {max_items} entries"
        for k, v in value.items():
            why = (None if k is not None else "null") or key(k)
            if why:
                return f"key {why}"
            why = value_check(v)
            if why:
                return f"value of {_short(k)} {why}"
        return None

    return check


def scalar(max_chars: int) -> Check:
    """None, a bool, a finite number or a string of at most ``max_chars`` characters."""
    as_text = text(max_chars)

    def check(value: Any) -> str | None:
        if value is None or type(value) in (bool, int):
            return None
        if type(value) is float:
            return None if math.isfinite(value) else f"{value!r} is not finite"
        return as_text(value)

    return check


def either(*checks: Check) -> Check:
    """Passes if one of ``checks`` does; says why the first did not."""

    def check(value: Any) -> str | None:
        reasons = [one(value) for one in checks]
        return None if None in reasons else reasons[0]

    return check


_ID = text(ID_CHARS)
_STAMP = scalar(ID_CHARS)

HEADERS: dict[str, Check] = {
    # Celery's protocol 2, as ``celery.app.amqp.as_task_v2`` writes it (the task name and id are
    # checked with the arguments, in bus.broker.deadletter).
    "lang": text(16),
    "shadow": _ID,
    "eta": text(64),
    "expires": text(64),
    "group": _ID,
    "group_index": integer(0, 1_000_000),
    "retries": integer(0, 1_000_000),
    # [hard, soft]: checked against the worker's own limit in limits_problem.
    "timelimit": list_of(number, 2),
    "root_id": _ID,
    "parent_id": _ID,
    "argsrepr": text(REPR_CHARS),
    "kwargsrepr": text(REPR_CHARS),
    "origin": text(1024),
    "ignore_result": flag,
    "replaced_task_nesting": integer(0, 1000),
    "stamped_headers": list_of(text(ID_CHARS), MAX_STAMPS),
    "stamps": map_of(text(ID_CHARS), either(_STAMP, list_of(_STAMP, MAX_STAMPS)), MAX_STAMPS),
    # kombu's Redis transport marks a message it restores (the visibility timeout ran out).
    "redelivered": flag,
    # kombu reads it to decompress the body: the bus never compresses (a zlib bomb otherwise).
    "compression": exactly(None),
    # The bus's own (bus.broker.dispatch) and its trace context (bus.observability.tracing).
    "eventbus_request_id": text(ID_CHARS),
    "eventbus_lost": text(4096),  # sent by releases before the scheduler; read by none now
    "eventbus_wake_bound": integer(1, 1000),
    tracing.TRACEPARENT: text(tracing.MAX_TRACEPARENT_CHARS),
    tracing.TRACESTATE: text(tracing.MAX_TRACESTATE_CHARS),
    tracing.EVENT_TRACEPARENTS: map_of(
        text(36), text(tracing.MAX_TRACEPARENT_CHARS), tracing.MAX_EVENT_TRACEPARENTS
    ),
}
"""Every header a message to the bus may carry besides ``task`` and ``id``."""
BROKER_PREFIX = "x-"
"""Headers a broker adds (RabbitMQ's ``x-delivery-count``, ``x-death``): no Python name, so
nothing in Celery reads them; kept, unchecked."""

PROPERTIES: dict[str, Check] = {
    "correlation_id": _ID,
    "reply_to": _ID,
    "delivery_mode": integer(1, 2),
    # kombu's Redis transport keeps priorities 0 to 9 (one list each); Celery resends a
    # retry with the priority it was given.
    "priority": integer(0, 9),
    "body_encoding": exactly("base64", "utf-8"),
    "delivery_tag": text(128),
    "delivery_info": map_of(text(64), scalar(ID_CHARS), 8),
}
"""The properties of a kombu envelope (Redis and the other virtual transports) Celery reads."""
OTHER_PROPERTY = either(scalar(1024), exactly([]), exactly({}))
"""Celery also writes leftover send options there (``origin`` on a resend from a task); they
reach the task as ``request.properties`` only, never as its fields: any short plain value."""

EMBED: dict[str, Check] = {
    key: either(exactly(None), exactly([])) for key in ("callbacks", "errbacks", "chain", "chord")
}
"""The body's third part, each key merged into the task's context: no canvas on the bus."""


def fields_problem(
    kind: str, values: Mapping[Any, Any], checks: Mapping[str, Check], others: Check | None = None
) -> str | None:
    """Why ``values`` has a field that does not pass its check in ``checks``, or (when
    ``others`` is None) a field ``checks`` does not name; ``others`` checks those instead."""
    for name, value in values.items():
        check = checks.get(name) if type(name) is str else None
        if check is None:
            if kind == "header" and type(name) is str and name.startswith(BROKER_PREFIX):
                continue
            if others is None or type(name) is not str or len(name) > 64:
                return f"{kind} {_short(name)} is not one the bus or Celery sends"
            check = others
        why = check(value)
        if why:
            return f"{kind} {name} {why}"
    return None


def limits_problem(headers: Mapping[str, Any], now: datetime, bounds: Bounds) -> str | None:
    """Why ``eta``, ``expires`` or ``timelimit`` asks for what the bus never sends.

    An ``eta`` later than the bus's longest delay plus :data:`ETA_MARGIN_SECONDS` would sit in
    the worker's memory (acknowledged by no one) until then; an ``expires`` already past would
    have Celery drop the message as revoked. A ``timelimit`` is what a message sent from a task
    carries: the worker's own limits, from :data:`MIN_TIME_LIMIT` seconds (a shorter one has
    the pool kill its child at once) up to the worker's hard limit.
    """
    eta = _time(headers.get("eta"))
    if isinstance(eta, str):
        return f"header eta {eta}"
    if eta is not None:
        latest = now + timedelta(seconds=bounds.longest_delay + ETA_MARGIN_SECONDS)
        if not EARLIEST <= eta <= latest:
            return f"header eta {eta.isoformat()} is not between 1970 and {latest.isoformat()}"
    expires = _time(headers.get("expires"))
    if isinstance(expires, str):
        return f"header expires {expires}"
    if expires is not None and not now < expires <= now + MAX_EXPIRES:
        return f"header expires {expires.isoformat()} is past or more than a year away"
    limits = headers.get("timelimit") or [None, None]
    if len(limits) != 2 or not all(
        v is None or (type(v) is not bool and MIN_TIME_LIMIT <= v <= bounds.time_limit)
        for v in limits
    ):
        return (
            f"header timelimit {_short(limits)} is not [hard, soft] from {MIN_TIME_LIMIT:g} "
            f"to {bounds.time_limit:g} s"
        )
    return None


def _time(value: str | None) -> datetime | str | None:
    """The time as Celery reads it (dateutil's ISO 8601 parser, naive as UTC), or why not."""
    if value is None:
        return None
    if not value:  # Celery's maybe_iso8601 makes "" None, then maybe_make_aware(None) raises
        return "'' is not an ISO 8601 time"
    try:
        parsed: datetime = isoparse(value)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed.astimezone(UTC)  # an offset past the calendar's end raises here, not in Celery
    except (ValueError, OverflowError, TypeError):
        return f"{_short(value)} is not an ISO 8601 time"
    return parsed
