"""The ``Idempotency-Key`` header of the publishes: reading it, and answering a keyed publish.

A publish with a key runs in its own unit of work (``api.deps.Work``), not in the group commit:
its key's lock, lookup and row share the transaction of its event
(``bus.publish.service.publish_once``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse

from bus.publish import idempotency
from bus.publish.service import Answer
from bus.storage.models import EventRow

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"

PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Makes the publish safe to retry: the same key (per tenant) with the same "
    f"request within EVENTBUS_IDEMPOTENCY_TTL_SECONDS is answered the first response again, "
    f"byte for byte, with `{REPLAYED}: true`, and stores nothing new. 1 to 255 printable ASCII "
    "characters (else, or sent twice, `400 Invalid Idempotency-Key`).",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": idempotency.KEY_PATTERN,
    },
}
"""The header's OpenAPI parameter (read by :func:`idempotency_key`, not by FastAPI)."""

REPLAYED_HEADER: dict[str, Any] = {
    REPLAYED: {
        "description": "`true` when this is the stored response of an earlier request with the "
        "same Idempotency-Key (absent otherwise)",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


async def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key`` (``None`` without one); ``400 Invalid
    Idempotency-Key`` for a malformed one or two headers."""
    return idempotency.parse_key(request.headers.getlist(HEADER))


def fingerprint(request: Request, events: Sequence[EventRow], *, batch: bool = False) -> str:
    """What a key's later requests must match: method, path and what the publish accepted of
    the body (``bus.publish.idempotency.accepted``), never the raw body: the keyed path answers
    whatever the key-less one does."""
    body = idempotency.accepted(events, batch=batch)
    return idempotency.fingerprint(request.method, request.url.path, body)


def render(content: Any, status_code: int = 201) -> bytes:
    """The body a ``JSONResponse`` of ``content`` sends: what a keyed publish stores."""
    return bytes(JSONResponse(content, status_code=status_code).body)


def answer(result: Answer) -> Response:
    """A keyed publish's response; a replay says so in ``Idempotent-Replayed``."""
    headers = {REPLAYED: "true"} if result.replayed else None
    return Response(
        result.body, status_code=result.status_code, media_type="application/json", headers=headers
    )


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
