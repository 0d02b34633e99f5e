"""List cursors: where a walk of the list stands, opaque to clients and signed.

A cursor names the last event a page returned, by its place in the list's order
(``created_at`` desc, ``id`` desc); the next page is the events strictly after it. So a walk by
cursor returns each event once however many are published meanwhile (they are newer: they sort
before the walk's first page), where an OFFSET would shift under them.

The cursor is ``base64url(version ‖ created_at µs ‖ id ‖ tag)`` with ``tag`` an HMAC-SHA256 (cut
to 16 bytes) over the version, the position and the *scope*: the tenant the list acts in and its
filters. The scope is not carried, it is recomputed from the request, so a cursor altered in
any byte, made up, or used with another tenant or other filters fails the check:
``Invalid cursor``. The key is derived from the bus's signing secret, which every API replica
shares; rotating that secret ends the walks under way (a client starts again from page 1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bus.errors import InvalidCursor
from bus.events.schemas import LIST_FILTERS

_VERSION = 1
_POSITION = struct.Struct(">Bq16s")
"""version, created_at in microseconds since the epoch (signed), id."""
_TAG_BYTES = 16
_LENGTH = _POSITION.size + _TAG_BYTES
_ENCODED_LENGTH = len(base64.urlsafe_b64encode(bytes(_LENGTH)).rstrip(b"="))
_SPARE_BITS = _ENCODED_LENGTH * 6 - _LENGTH * 8
_LAST = "".join(
    c
    for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    if i % (1 << _SPARE_BITS) == 0
)
CURSOR_PATTERN = f"^([A-Za-z0-9_-]{{{_ENCODED_LENGTH - 1}}}[{_LAST}])?$"
"""What a cursor can be (base64url of its bytes, no padding: 55 characters, the last one's
spare bits zero); empty means none. The document says so, so a schema-valid cursor is at least
one this bus could have written."""
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEY_LABEL = b"eventbus list cursor v1"


@dataclass(frozen=True, slots=True)
class Position:
    """An event's place in the list's order: the page after it starts below it."""

    created_at: datetime
    id: uuid.UUID


def derive_key(signing_secret: str) -> bytes:
    """The cursors' HMAC key: its own, derived from the signing secret, so a cursor's tag can
    never be mistaken for (or help forge) a token's signature."""
    return hmac.new(signing_secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _scope(tenant_id: uuid.UUID | None, filters: Mapping[str, str]) -> bytes:
    """The tenant and the filters, in one unambiguous form (JSON of their canonical order)."""
    named = [[name, filters[name]] for name in LIST_FILTERS if filters.get(name)]
    return json.dumps([str(tenant_id) if tenant_id else None, named]).encode()


def _tag(key: bytes, position: bytes, scope: bytes) -> bytes:
    mac = hmac.new(key, position, hashlib.sha256)
    mac.update(scope)
    return mac.digest()[:_TAG_BYTES]


def encode(
    key: bytes, position: Position, tenant_id: uuid.UUID | None, filters: Mapping[str, str]
) -> str:
    """The cursor of the page after ``position``, valid for this tenant and these filters."""
    micros = (position.created_at - _EPOCH) // timedelta(microseconds=1)
    packed = _POSITION.pack(_VERSION, micros, position.id.bytes)
    raw = packed + _tag(key, packed, _scope(tenant_id, filters))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(
    key: bytes, cursor: str, tenant_id: uuid.UUID | None, filters: Mapping[str, str]
) -> Position:
    """The position a cursor names, if this bus made it for this tenant and these filters;
    anything else is ``Invalid cursor`` (nothing says which check failed)."""
    if len(cursor) != _ENCODED_LENGTH or not _CURSOR.fullmatch(cursor):
        raise InvalidCursor()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor() from exc
    packed, tag = raw[: _POSITION.size], raw[_POSITION.size :]
    # The last character carries 2 unused bits: only our own spelling of the bytes is ours.
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == cursor
    if (
        not canonical
        or len(raw) != _LENGTH
        or not hmac.compare_digest(tag, _tag(key, packed, _scope(tenant_id, filters)))
    ):
        raise InvalidCursor()
    version, micros, id_bytes = _POSITION.unpack(packed)
    if version != _VERSION:
        raise InvalidCursor()
    try:
        created_at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError as exc:  # signed, so only a cursor of our own key gets here
        raise InvalidCursor() from exc
    return Position(created_at, uuid.UUID(bytes=id_bytes))
