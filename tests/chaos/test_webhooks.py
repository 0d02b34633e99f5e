"""The chaos ledger of webhook delivery: 2,000 events of a module only endpoints take, sent by
two real workers to a real receiver that is SIGKILLed twice mid-traffic and started again on its
port. Nothing lost (every event processed, each acknowledged by a 2xx the receiver wrote out),
nothing delivered and acknowledged twice (a 2xx the receiver wrote out for the same
``webhook-id`` twice)."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from bus.webhooks import endpoints
from tests.chaos.harness import TENANTS, Counts, Planned, Stack, StackFactory, _principal
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

EVENTS = 2000
MODULE = "hooks"


def test_receiver_killed_and_restarted(stack: StackFactory) -> None:
    # Given two workers delivering a module's events to two tenants' endpoints on one receiver
    s = stack(
        webhook_allow_networks="127.0.0.1/32",
        webhook_retry_schedule="0.5,1,1,2,2,2,2,2,2,2,2,2",
        webhook_timeout_seconds=5.0,
    )
    receiver = Receiver().start()
    try:
        secrets = {}
        with s.runtime.unit_of_work() as uow:
            for n, tenant in enumerate(TENANTS[:2]):
                body = {"target_module": MODULE, "url": f"{receiver.url}/t{n}"}
                made = endpoints.create(uow, s.settings, _principal(tenant), None, body)
                secrets[f"/t{n}"] = made["secret"]
            uow.commit()
        s.start_workers("w1", "w2", modules=MODULE)
        rng = random.Random(7)
        planned = [
            Planned(
                TENANTS[n % 2],
                {
                    "event_type": "chaos_tick",
                    "source_module": "chaos",
                    "target_module": MODULE,
                    "entity_type": "tick",
                    "entity_id": f"tick-{rng.randrange(500)}",
                    "event_data": {"n": n},
                },
            )
            for n in range(EVENTS)
        ]
        # When the events are published at 120/s and the receiver is SIGKILLed twice (4 s and
        # 3 s down), each time started again on its port
        published = s.publish_in_background(planned)
        for wait, down in ((3.0, 4.0), (5.0, 3.0)):
            time.sleep(wait)
            receiver.kill()
            s.faults.append(time.monotonic())
            time.sleep(down)
            receiver.restart()
        ids = published()
        # Then every event is processed, and acknowledged once
        s.wait_processed(len(ids), timeout=120)
        counts = _count(s, receiver, ids, secrets)
        counts.record()
        counts.check()
        assert counts.restarted_after_fault > 0  # some deliveries failed and were retried
    finally:
        receiver.stop()


def _count(s: Stack, receiver: Receiver, ids: list[uuid.UUID], secrets: dict[str, str]) -> Counts:
    counts = Counts(
        "webhook_receiver_killed",
        "the webhook receiver SIGKILLed twice under load (4 s and 3 s down), restarted on its port",
        "an acknowledgement is a 2xx recorded with the event's outcome, in its transaction; an "
        "event whose request failed is retried to the endpoints that did not answer 2xx only",
        published=len(ids),
    )
    answered: Counter[str] = Counter()
    paths: dict[str, str] = {}
    for line in receiver.records():
        if line.get("kind") == "answered" and 200 <= line["status"] < 300:
            answered[line["id"]] += 1
            paths[line["id"]] = line["path"]
    with s.runtime.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, tenant_id, status, retry_count FROM system_events "
                "WHERE target_module = :m"
            ),
            {"m": MODULE},
        ).all()
    stored = {row.id: row for row in rows}
    tenant_path = {TENANTS[0]: "/t0", TENANTS[1]: "/t1"}
    for event_id in ids:
        row = stored.get(event_id)
        key = str(event_id)
        if row is None or row.status != "processed" or answered[key] == 0:
            counts.lost += 1
            counts.problems.append(
                f"{event_id}: {row.status if row else 'missing'}, "
                f"acknowledged {answered[key]} times"
            )
            continue
        counts.processed += 1
        if answered[key] > 1:
            counts.completed_twice += 1
            counts.problems.append(f"{event_id}: acknowledged {answered[key]} times")
        if paths[key] != tenant_path[row.tenant_id]:
            counts.problems.append(f"{event_id}: delivered to {paths[key]}, another tenant's")
        if row.retry_count:
            counts.restarted_after_fault += 1
    # The signatures hold (a sample, checked by the outside package).
    for record in receiver.received()[:50]:
        Webhook(secrets[record["path"]]).verify(receiver.body(record), record["headers"])
    counts.seconds = round(time.monotonic() - s.started, 1)
    print(
        json.dumps({"acknowledged": sum(answered.values()), "requests": len(receiver.received())})
    )
    return counts
