"""Webhook deliveries a second from one process: the sender against a fast receiver.

    PYTHONPATH=. .venv/bin/python bench/webhooks_sender.py [--requests 20000] [--batch 200]
        [--runs 3] [--format seed]

A receiver subprocess on 127.0.0.1 (``tests.support.receiver``, answering 204, logging
nothing); each delivery is built and signed (:func:`bus.webhooks.payloads.build`, the seed's
example event) and sent through one :class:`workers.sender.Sender`, a list of ``--batch``
at a time, each list awaited before the next (as a worker would). Prints one JSON line per
run and the median deliveries a second; building is timed too (it is the worker's work).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bus.storage.models import EndpointFormat
from bus.webhooks import payloads
from bus.webhooks.signing import new_secret
from bus.webhooks.urls import UrlPolicy, parse_networks
from tests.support.receiver import Receiver
from workers.sender import Request, Sender


def event(n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "tenant_id": "9a0c6a52-3f6e-4a53-8c9e-0d6c3c1d5b11",
        "event_type": "inventory_updated",
        "source_module": "inventory",
        "target_module": "warehouse",
        "entity_type": "inventory_item",
        "entity_id": f"item-{n}",
        "event_data": {"previous_quantity": 100, "new_quantity": 95, "n": n},
        "status": "pending",
        "retry_count": 0,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "processed_at": None,
        "error_message": None,
    }


def run(sender: Sender, url: str, count: int, batch: int, fmt: str) -> dict[str, Any]:
    secrets = [new_secret()]
    events = [event(n) for n in range(count)]
    failed = 0
    started = time.perf_counter()
    for at in range(0, count, batch):
        requests = []
        for ev in events[at : at + batch]:
            headers, body = payloads.build(ev, fmt, secrets)
            requests.append(Request((ev["id"], 1), url, headers, body))
        futures = sender.send(requests)
        concurrent.futures.wait(futures)
        failed += sum(not f.result().acknowledged for f in futures)
    seconds = time.perf_counter() - started
    return {
        "deliveries": count,
        "failed": failed,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--format", default="seed", choices=[f.value for f in EndpointFormat])
    args = parser.parse_args()
    with Receiver(record=False) as receiver:
        sender = Sender(UrlPolicy(parse_networks("127.0.0.1/32")))
        try:
            run(sender, receiver.url + "/hook", 1000, args.batch, args.format)  # warm-up
            results = []
            for _ in range(args.runs):
                result = run(sender, receiver.url + "/hook", args.requests, args.batch, args.format)
                print(json.dumps(result), flush=True)
                results.append(result)
            stats = receiver.stats()
        finally:
            sender.close()
    summary = {
        "median_per_second": statistics.median(r["per_second"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "connections": stats["connections"],
        "batch": args.batch,
        "format": args.format,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
