"""What a test's Redis queues hold, read the way kombu's Redis transport stores them, and their
removal after the test."""

from __future__ import annotations

import ast
import base64
import json
from collections import Counter

import redis

from bus.broker.queues import PROCESS_EVENTS_TASK, queue_name
from bus.settings import Settings
from tests.support.services import REDIS_URL


def _messages(settings: Settings, module: str) -> list[bytes]:
    """The raw messages on the module's queue, newest first (kombu pushes on the left)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return list(client.lrange(queue_name(module, settings.queue_prefix), 0, -1))
    finally:
        client.close()


def queue_length(name: str) -> int:
    """How many messages the Redis list ``name`` holds."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.llen(name))
    finally:
        client.close()


def queued(settings: Settings, module: str) -> list[list[str]]:
    """The id lists of the messages waiting on a module's Redis queue, oldest first."""
    messages = [json.loads(m) for m in reversed(_messages(settings, module))]
    assert all(m["headers"]["task"] == PROCESS_EVENTS_TASK for m in messages)
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def queued_ids(settings: Settings, module: str = "warehouse") -> Counter[str]:
    """How many messages the module's Redis queue holds for each event id."""
    ids: Counter[str] = Counter()
    for item in _messages(settings, module):
        (args,) = ast.literal_eval(json.loads(item)["headers"]["argsrepr"])
        ids.update(args if isinstance(args, list) else [args])  # a batch, or one legacy id
    return ids


def drop_queues(prefix: str) -> None:
    """Remove the test's Redis queues and kombu's bindings for them (``_kombu.binding.`` and,
    since kombu 5.7, ``_kombu.binding_permanent.``): one SCAN, a thousand keys a step, as a
    test's teardown must not cost a round trip per ten keys of whatever else Redis holds."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [
            key
            for key in client.scan_iter(match=f"*{prefix}*", count=1000)
            if key.startswith(prefix.encode()) or key.startswith(b"_kombu.binding")
        ]
        if keys:
            client.delete(*keys)
    finally:
        client.close()
