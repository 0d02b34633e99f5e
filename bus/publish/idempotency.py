"""A publish's ``Idempotency-Key``: the header's rules and the request's fingerprint.

What a key does (one response per tenant and key, kept for ``EVENTBUS_IDEMPOTENCY_TTL_SECONDS``)
is :mod:`bus.storage.idempotency_store`; :func:`bus.publish.service.publish_once` uses both.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from bus.errors import InvalidIdempotencyKey
from bus.events import fields
from bus.storage.models import EventRow

MAX_KEY_LENGTH = 255
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
"""A key: 1 to 255 printable ASCII characters (space included), as the OpenAPI document says."""
_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def parse_key(values: list[str]) -> str | None:
    """The key of a request's ``Idempotency-Key`` header values (``None`` without one).

    Two headers are refused like a malformed one: a proxy may read the first where the API
    would read the last. The value is the key as sent (a draft-style quoted string keeps its
    quotes: the same client sends the same text every time).
    """
    if not values:
        return None
    if len(values) > 1 or _KEY.fullmatch(values[0]) is None:
        raise InvalidIdempotencyKey()
    return values[0]


CLOUDEVENT_KEY_PREFIX = "cloudevents:"


def cloudevent_key(source: str, event_id: str) -> str:
    """The key of a CloudEvent published without an ``Idempotency-Key``: its ``source`` and
    ``id`` name it (CloudEvents 1.0), so the same pair from one tenant is stored once. Hashed,
    as the pair may be any text of any length; a header's key never starts with
    ``cloudevents:`` by chance."""
    pair = json.dumps([source, event_id], ensure_ascii=False, separators=(",", ":"))
    return CLOUDEVENT_KEY_PREFIX + hashlib.sha256(pair.encode("utf-8")).hexdigest()


ACCEPTED_FIELDS = fields.PUBLISHED
"""What a publish takes from its body; every other field of it is ignored."""


def accepted(events: Sequence[EventRow], *, batch: bool) -> Any:
    """The body as the publish understood it: each event's :data:`ACCEPTED_FIELDS`, as one
    object (a publish) or under ``events`` (a batch); the fields it ignores are left out.

    Built from events that passed the publish's rules, it always has a canonical JSON (text
    UTF-8 can encode, finite numbers, bounded nesting), whatever else the raw body held: a
    ``1e999`` or a lone surrogate in an ignored field is answered 201 with a key as without
    one, and a retry that changes only an ignored field is the same request.
    """
    bodies = [{name: getattr(event, name) for name in ACCEPTED_FIELDS} for event in events]
    return {"events": bodies} if batch else bodies[0]


def fingerprint(method: str, path: str, body: Any) -> str:
    """sha256 over the method, the path and the canonical JSON (keys sorted, no whitespace)
    of the :func:`accepted` body: the same request sent again, whatever its key order or
    spacing."""
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    digest = hashlib.sha256()
    for part in (method.upper(), path, canonical):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()
