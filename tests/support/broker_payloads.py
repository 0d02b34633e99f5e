"""Hostile broker messages: raw Redis list items and AMQP messages a foreign client could send.

Each Redis item is built by hand, the way a client that is not the bus would build it: a
kombu envelope (``body`` base64 of Celery's protocol-2 ``[args, kwargs, embed]``, ``headers``,
``properties``) with one thing wrong, or no envelope at all.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from typing import Any

from bus.broker.queues import PROCESS_EVENT_TASK

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_headers(task: str = PROCESS_EVENT_TASK, args: Any = None, **over: Any) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(args),
        "kwargsrepr": "{}",
        "origin": "hostile@client",
        "ignore_result": True,
    }
    headers.update(over)
    return headers


def body_of(args: Any, kwargs: Any = None, embed: Any = None) -> bytes:
    return json.dumps(
        [args, {} if kwargs is None else kwargs, EMBED if embed is None else embed]
    ).encode()


def envelope(
    queue: str,
    *,
    task: str = PROCESS_EVENT_TASK,
    args: Any = None,
    kwargs: Any = None,
    embed: Any = None,
    body: bytes | None = None,
    headers: Any = None,
    content_type: Any = "application/json",
    content_encoding: Any = "utf-8",
    **properties: Any,
) -> dict[str, Any]:
    """A kombu envelope as the Redis transport stores it; arguments override any part."""
    args = [str(uuid.uuid4())] if args is None else args
    raw_body = body_of(args, kwargs, embed) if body is None else body
    props: dict[str, Any] = {
        "correlation_id": str(uuid.uuid4()),
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    props.update(properties)
    return {
        "body": base64.b64encode(raw_body).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": task_headers(task, args) if headers is None else headers,
        "properties": props,
    }


def raw(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def redis_payloads(queue: str) -> dict[str, bytes]:
    """Every hostile list item, by name; none of them is a well-formed bus task."""
    rng = random.Random(9)
    event_id = str(uuid.uuid4())
    good = raw(envelope(queue))
    items: dict[str, bytes] = {
        "garbage": b"garbage",
        "json list": b"[1,2,3]",
        "json null": b"null",
        "json string": b'"eventbus"',
        "json number": b"1e999",
        "empty": b"",
        "empty object": b"{}",
        "deep nesting": b"[" * 100_000,
        "not utf-8": b"\xff\xfe\xfd" * 10,
        "truncated envelope": good[: len(good) // 2],
        "truncated by one byte": good[:-1],
        "properties not an object": b'{"properties": 1}',
        "no delivery_tag": raw({"body": "", "properties": {"delivery_info": {}}}),
        "delivery_tag a number": raw(envelope(queue, delivery_tag=12345)),
        "delivery_info a list": raw(envelope(queue, delivery_info=[1])),
        "headers a list": raw(envelope(queue, headers=[1, 2])),
        "body not base64": raw({**envelope(queue), "body": "!!!not base64!!!"}),
        "body a number": raw({**envelope(queue), "body": 7}),
        "unknown body_encoding": raw(envelope(queue, body_encoding="rot13")),
        "compressed (zlib bomb)": raw(
            envelope(queue, headers={**task_headers(args=[event_id]), "compression": "zlib"})
        ),
        "content-type pickle": raw(envelope(queue, content_type="application/x-python-serialize")),
        "content-type text": raw(envelope(queue, content_type="text/plain")),
        "content-type a list": raw(envelope(queue, content_type=["application/json"])),
        "content-encoding binary": raw(envelope(queue, content_encoding="binary")),
        "celery.backend_cleanup": raw(envelope(queue, task="celery.backend_cleanup", args=[])),
        "celery.chord_unlock": raw(envelope(queue, task="celery.chord_unlock", args=[event_id])),
        "celery.accumulate": raw(envelope(queue, task="celery.accumulate", args=[1, 2])),
        "another task": raw(envelope(queue, task="myapp.tasks.delete_everything")),
        "task header missing (protocol 1)": raw(
            envelope(
                queue,
                headers={"id": str(uuid.uuid4())},
                body=json.dumps(
                    {"task": PROCESS_EVENT_TASK, "id": "x", "args": [event_id], "kwargs": {}}
                ).encode(),
            )
        ),
        "task header a number": raw(envelope(queue, headers=task_headers(task=7))),  # type: ignore[arg-type]
        "args an integer": raw(envelope(queue, args=[12345])),
        "args empty": raw(envelope(queue, args=[])),
        "args two ids": raw(envelope(queue, args=[event_id, event_id])),
        "args not a uuid": raw(envelope(queue, args=["not-a-uuid"])),
        "args null": raw(envelope(queue, args=[None])),
        "batch args to the one-id task": raw(envelope(queue, args=[[event_id, event_id]])),
        "args a dict": raw(envelope(queue, args={"event_id": event_id})),
        "unexpected kwargs": raw(envelope(queue, args=[event_id], kwargs={"x": 1})),
        "kwargs only": raw(envelope(queue, args=[], kwargs={"event_id": event_id})),
        "callbacks in embed": raw(
            envelope(queue, embed={**EMBED, "callbacks": [{"task": "celery.backend_cleanup"}]})
        ),
        "body not [args, kwargs, embed]": raw(envelope(queue, body=b'{"args": []}')),
        "body not json": raw(envelope(queue, body=b"\x80\x04pickle")),
        "eta not a time": raw(envelope(queue, headers=task_headers(args=[event_id], eta="soon"))),
        "expires not a time": raw(
            envelope(queue, headers=task_headers(args=[event_id], expires="never"))
        ),
        "timelimit a string": raw(
            envelope(queue, headers=task_headers(args=[event_id], timelimit="xx"))
        ),
        "timelimit three values": raw(
            envelope(queue, headers=task_headers(args=[event_id], timelimit=[1, 2, 3]))
        ),
        "retries a string": raw(
            envelope(queue, headers=task_headers(args=[event_id], retries="x"))
        ),
        "task id a number": raw(envelope(queue, headers=task_headers(args=[event_id], id=123))),
        "body of 1 MB": raw(
            envelope(queue, body=body_of([event_id], embed={**EMBED, "pad": "x" * 1_000_000}))
        ),
        "envelope of 1 MB of garbage": b"x" * 1_000_000,
        "a valid envelope naming another task": raw(envelope(queue, task="workers.tasks.other")),
    }
    batch = "eventbus.process_events"
    items.update(
        {
            "batch: empty": raw(envelope(queue, task=batch, args=[[]])),
            "batch: one id, not in a list": raw(envelope(queue, task=batch, args=[event_id])),
            "batch: a non-uuid among ids": raw(envelope(queue, task=batch, args=[[event_id, "x"]])),
            "batch: 5001 ids": raw(envelope(queue, task=batch, args=[[event_id] * 5001])),
        }
    )
    ids = [[event_id]]
    items.update(
        {
            f"trace: {name}": raw(envelope(queue, headers=task_headers(batch, ids, **bad)))
            for name, bad in {
                "traceparent a number": {"traceparent": 7},
                "traceparent of 10 kB": {"traceparent": "0" * 10_000},
                "tracestate a list": {"tracestate": ["a=1"]},
                "map a list": {"eventbus_traceparents": [event_id]},
                "map value a number": {"eventbus_traceparents": {event_id: 1}},
                "map value of 10 kB": {"eventbus_traceparents": {event_id: "0" * 10_000}},
                "map of 1001 entries": {
                    "eventbus_traceparents": {str(uuid.UUID(int=i)): "" for i in range(1001)}
                },
            }.items()
        }
    )
    # Issue 17: fields Celery reads before the task runs, each of the wrong shape
    items.update(
        {
            f"celery: {name}": raw(envelope(queue, task=batch, args=ids, headers=headers))
            for name, headers in celery_field_payloads(batch, ids).items()
        }
    )
    items.update(
        {
            "property priority 10**9": raw(envelope(queue, priority=10**9)),
            "property reply_to a list": raw(envelope(queue, reply_to=[[]])),
            "property correlation_id a dict": raw(envelope(queue, correlation_id={})),
            "property delivery_mode a string": raw(envelope(queue, delivery_mode="2")),
            "property delivery_info nested": raw(
                envelope(queue, delivery_info={"exchange": "", "routing_key": queue, "x": [{}]})
            ),
            "property unknown, an object": raw(envelope(queue, application_headers={"t": 1})),
            "property unknown, of 10 kB": raw(envelope(queue, origin="o" * 10_000)),
            "embed with another key": raw(envelope(queue, embed={**EMBED, "link": None})),
            "embed chain a list of one": raw(envelope(queue, embed={**EMBED, "chain": [{}]})),
        }
    )
    for n in range(5):
        items[f"random bytes #{n}"] = bytes(
            rng.randrange(256) for _ in range(rng.randrange(1, 300))
        )
    return items


FAR_ETA = "2099-01-01T00:00:00+00:00"
"""Later than any delay the bus sends: a message with it would wait in the worker's memory."""
PAST = "2001-01-01T00:00:00+00:00"


def celery_field_payloads(task: str, args: Any) -> dict[str, dict[str, Any]]:
    """Headers, by name, each with one field Celery reads of the wrong shape (issue 17)."""
    return {
        name: task_headers(task, args, **bad)
        for name, bad in {
            # The message: Celery hashed each stamp name and the worker died
            "stamped_headers [[]]": {"stamped_headers": [[]], "stamps": {}},
            "stamped_headers [{}]": {"stamped_headers": [{}], "stamps": {}},
            "stamped_headers a string": {"stamped_headers": "abc"},
            "stamps a list": {"stamped_headers": ["a"], "stamps": [1]},
            "stamps value nested": {"stamped_headers": ["a"], "stamps": {"a": [[{}]]}},
            "eta in 2099": {"eta": FAR_ETA},
            "eta in year 1": {"eta": "0001-01-01T00:00:00+14:00"},
            "eta a number": {"eta": 4102444800},
            "expires in the past": {"expires": PAST},
            "expires a list": {"expires": [PAST]},
            "timelimit of 1 ms": {"timelimit": [0.001, 0.001]},
            "timelimit [[], []]": {"timelimit": [[], []]},
            "retries a float": {"retries": 1.5},
            "retries a bool": {"retries": True},
            "retries 10**30": {"retries": 10**30},
            "group a dict": {"group": {"id": 1}},
            "group_index a string": {"group_index": "0"},
            "root_id a list": {"root_id": [[]]},
            "parent_id a number": {"parent_id": 7},
            "shadow a dict": {"shadow": {}},
            "origin of 10 kB": {"origin": "o" * 10_000},
            "argsrepr of 100 kB": {"argsrepr": "a" * 100_000},
            "lang a list": {"lang": ["py"]},
            "ignore_result a string": {"ignore_result": "yes"},
            "replaced_task_nesting a list": {"replaced_task_nesting": [0]},
            "redelivered a dict": {"redelivered": {}},
            "a chain header (runs tasks from the worker)": {"chain": [{"task": "x"}]},
            "a callbacks header": {"callbacks": [{"task": "x"}]},
            "an unknown header": {"delivery_info": {"exchange": "x"}},
            "request id a list": {"eventbus_request_id": [[]]},
            "lost marker a dict": {"eventbus_lost": {}},
        }.items()
    }


def valid_item(queue: str, event_id: str) -> bytes:
    """A hand-made message that is a well-formed bus task: it must be processed."""
    return raw(envelope(queue, args=[event_id]))


def valid_traced_item(queue: str, event_id: str) -> bytes:
    """A well-formed batch carrying trace context as a traced send makes it (a worker with
    tracing off ignores it; one with tracing on reads a malformed value as no parent)."""
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    headers = task_headers(
        "eventbus.process_events",
        [[event_id]],
        traceparent=traceparent,
        tracestate="vendor=1",
        eventbus_traceparents={event_id: "not-a-traceparent"},
    )
    return raw(envelope(queue, task="eventbus.process_events", args=[[event_id]], headers=headers))
