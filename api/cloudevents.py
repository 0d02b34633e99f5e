"""A publish's body: the seed's JSON, or one CloudEvent 1.0 (structured or binary HTTP mode).

The API only hands the request's plain values (``Content-Type``, headers, the body's bytes,
capped as every JSON body is) to :func:`bus.events.cloudevents.read_publish`, which decides
the mode and reads it; the mapping onto a publish is the bus's
(:func:`bus.events.cloudevents.parse_cloudevent`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from api.deps import read_body
from api.envelopes import CLOUDEVENT_BODY_SCHEMA, PUBLISH_BODY_SCHEMA
from bus.events import cloudevents

REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": PUBLISH_BODY_SCHEMA},
        cloudevents.STRUCTURED_MEDIA_TYPE: {"schema": CLOUDEVENT_BODY_SCHEMA},
    },
}
"""The publish's OpenAPI ``requestBody``: the seed's body, or a structured CloudEvent (binary
mode's ``ce-*`` headers are in the route's description: a header alone is no valid request)."""


async def publish_body(request: Request) -> Any:
    """The seed's publish body as JSON, or a :class:`bus.events.cloudevents.CloudEvent`: a
    ``Content-Type: application/cloudevents+json`` body, or ``ce-*`` headers with the data as
    the body. Capped by ``EVENTBUS_MAX_BODY_BYTES`` before it is read whole."""
    raw = await read_body(request)
    return cloudevents.read_publish(
        request.headers.get("content-type"), request.headers.items(), raw
    )


PublishBody = Annotated[Any, Depends(publish_body)]
