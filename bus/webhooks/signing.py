"""Standard Webhooks signatures (https://www.standardwebhooks.com/): what a receiver checks with
the one-line library of its language.

A delivery carries three headers: ``webhook-id`` (the same for every attempt of one message, so
a receiver can drop a repeat: the event's id), ``webhook-timestamp`` (Unix seconds of this
attempt; receivers refuse one more than 5 minutes away from their clock) and
``webhook-signature``: ``v1,<base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}">``, keyed
with the secret's bytes (the base64 after ``whsec_``). During a rotation it holds one signature
per valid secret, separated by spaces: a receiver still on the previous secret, or already on
the new one, finds its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from secrets import token_bytes

SECRET_PREFIX = "whsec_"
GENERATED_SECRET_BYTES = 24
_B64 = "[A-Za-z0-9+/]"
SECRET_PATTERN = (
    f"^{SECRET_PREFIX}(?:(?:{_B64}{{4}}){{8,20}}(?:{_B64}{{2}}==|{_B64}{{3}}=)?"
    f"|(?:{_B64}{{4}}){{21}}(?:{_B64}{{2}}==)?)$"
)
"""A given secret: ``whsec_`` and the padded standard base64 of a 24 to 64 byte key, as Svix
takes them (below 24 bytes, the key is guessable sooner than HMAC-SHA256's output): 8 to 21
groups of four characters (3 bytes each), the last perhaps padded (1 or 2 bytes), 64 bytes at
most. The document's pattern for ``secret``, exactly what :func:`secret_key` takes."""
_SECRET = re.compile(SECRET_PATTERN)
SIGNATURE_VERSION = "v1"

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


def new_secret() -> str:
    """A fresh secret: ``whsec_`` and the base64 of 24 random bytes."""
    key = token_bytes(GENERATED_SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret: the padded standard base64 after the prefix,
    decoded. ValueError for anything else (:data:`SECRET_PATTERN`: a key of 24 to 64 bytes)."""
    if not isinstance(secret, str) or not _SECRET.fullmatch(secret):
        raise ValueError("a webhook secret is whsec_ and the base64 of 24 to 64 bytes")
    return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>``: the HMAC-SHA256 of ``{message_id}.{timestamp}.{body}`` under
    ``secret``, ``body`` exactly as sent."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def headers(
    message_id: str, body: bytes, secrets: Sequence[str], timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of a delivery of ``body``, signed with each of ``secrets`` (the
    current one first; the previous one too during a rotation), at ``timestamp`` (now by
    default)."""
    if not secrets:
        raise ValueError("a delivery is signed with at least one secret")
    at = int(time.time()) if timestamp is None else timestamp
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(at),
        SIGNATURE_HEADER: " ".join(signature(s, message_id, at, body) for s in secrets),
    }
