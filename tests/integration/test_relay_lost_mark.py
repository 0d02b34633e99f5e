"""The relay's re-send after an expired lease is marked like a redelivery, so a handler that
kills its whole worker cannot run uncounted again and again (tests/chaos: poison_whole_worker)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis

from bus.broker.dispatch import INTERRUPTED_HEADER, REQUEST_ID_HEADER
from bus.broker.queues import queue_name
from bus.events.rules import utcnow
from bus.maintenance.resend import LEASE_EXPIRED_MESSAGE, run_once
from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.factories import insert_events
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.integration


def queued_headers(settings: Settings) -> dict[str, dict[str, object]]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        raw = client.lrange(queue_name("warehouse", settings.queue_prefix), 0, -1)
    finally:
        client.close()
    messages = [json.loads(item) for item in raw]
    return {m["headers"]["argsrepr"].strip("[]'\""): m["headers"] for m in messages}


def test_a_resend_after_the_lease_is_marked_lost_and_a_first_send_is_not(
    settings: Settings, runtime: Runtime
) -> None:
    # Given an event whose send was stamped longer than a lease ago (its delivery may have died
    # with its worker) and one whose send never happened
    now = utcnow()
    stale = insert_events(
        runtime, 1, dispatched_at=now - timedelta(seconds=settings.relay_lease_seconds + 1)
    )[0]
    never = insert_events(runtime, 1, request_id="req-never")[0]
    # When the relay runs
    assert run_once(runtime, now=now) == 2
    # Then the re-send carries the lost mark the worker counts by, and the first send does not
    headers = queued_headers(settings)
    assert headers[str(stale)][INTERRUPTED_HEADER] == LEASE_EXPIRED_MESSAGE
    assert INTERRUPTED_HEADER not in headers[str(never)]
    assert headers[str(never)][REQUEST_ID_HEADER] == "req-never"
