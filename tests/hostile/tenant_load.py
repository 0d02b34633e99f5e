"""Tenant A's heavy load on the API, in a process of its own (``python -m
tests.hostile.tenant_load URL SECONDS TOKEN OUT``): ``REPLAYS`` clients each sending maximal
replays (``{"max": 100000}``) and ``PAGES`` clients each reading maximal pages (``limit=1000``),
back to back for SECONDS (loopback only). A 429 is waited out for ``BACKOFF`` seconds, a
quarter of what its ``Retry-After`` asks: a pushy client, not a polite one. Writes the count of
each answer to OUT as JSON; a call still unanswered ``GRACE`` seconds after the end is
cancelled and counted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPLAYS = 8
PAGES = 50
BACKOFF = 0.25
GRACE = 10.0


async def run(url: str, seconds: float, token: str) -> dict[str, dict[str, int]]:
    host = urlsplit(url).hostname or ""
    if not host.startswith("127."):
        raise SystemExit(f"refusing to load anything but loopback: {host}")
    headers = {"Authorization": f"Bearer {token}"}
    answers: dict[str, Counter[str]] = {"replay": Counter(), "page": Counter()}
    deadline = time.monotonic() + seconds

    async def loop(client: httpx.AsyncClient, kind: str) -> None:
        while time.monotonic() < deadline:
            try:
                if kind == "replay":
                    response = await client.post(
                        "/system/events/replay", json={"max": 100000}, headers=headers
                    )
                else:
                    response = await client.get(
                        "/system/events", params={"limit": "1000"}, headers=headers
                    )
            except httpx.TransportError as exc:
                answers[kind][type(exc).__name__] += 1
                continue
            answers[kind][str(response.status_code)] += 1
            if response.status_code == 429:
                await asyncio.sleep(BACKOFF)

    clients = REPLAYS + PAGES
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=seconds + GRACE) as client:
        tasks = [asyncio.create_task(loop(client, "replay")) for _ in range(REPLAYS)]
        tasks += [asyncio.create_task(loop(client, "page")) for _ in range(PAGES)]
        _, late = await asyncio.wait(tasks, timeout=seconds + GRACE)
        for task in late:  # a call still unanswered GRACE seconds after the end
            task.cancel()
        answers["unanswered"] = Counter({"calls": len(late)})
    return {kind: dict(counts) for kind, counts in answers.items()}


def main() -> None:
    url, seconds, token, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    out.write_text(json.dumps(asyncio.run(run(url, min(seconds, 120.0), token))))


if __name__ == "__main__":
    main()
