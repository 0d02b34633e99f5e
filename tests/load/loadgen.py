"""A bounded load generator for the API: ``python -m tests.load.loadgen URL SECONDS OUT``.

asyncio + httpx, ``CONCURRENCY`` keep-alive connections, each sending requests back to back
for ``SECONDS`` seconds (never longer, never anywhere but the given loopback URL): 85% publishes
spread over tenants and modules, 10% list pages, 5% stats. Writes its figures to OUT as JSON.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bus.auth import mint_token
from tests.support.tokens import TEST_SECRET

CONCURRENCY = 16
TENANTS = [uuid.UUID(f"{n:08x}-0000-4000-8000-0000000010ad") for n in range(1, 5)]
MODULES = ("warehouse", "notifications")


def _loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise SystemExit(f"refusing to load anything but loopback: {host}")


async def run(url: str, seconds: float) -> dict[str, Any]:
    _loopback_only(url)
    headers = {
        t: {"Authorization": "Bearer " + mint_token(TEST_SECRET, sub="load", tenant_id=t,
                                                     permissions=["manage:system"])}
        for t in TENANTS
    }  # fmt: skip
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    transport_errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient, rng: random.Random) -> None:
        while time.monotonic() < deadline:
            tenant = rng.choice(TENANTS)
            roll = rng.random()
            started = time.perf_counter()
            try:
                if roll < 0.85:
                    body = {
                        "event_type": "load_tick",
                        "source_module": "load",
                        "target_module": rng.choice(MODULES),
                        "entity_type": "tick",
                        "entity_id": f"tick-{rng.randrange(10**6)}",
                        "event_data": {"n": rng.randrange(10**6), "note": "x" * rng.randrange(200)},
                    }
                    response = await client.post(
                        "/system/events", json=body, headers=headers[tenant]
                    )
                    kind = "publish"
                elif roll < 0.95:
                    response = await client.get(
                        "/system/events", params={"limit": "50"}, headers=headers[tenant]
                    )
                    kind = "list"
                else:
                    response = await client.get("/system/events/stats", headers=headers[tenant])
                    kind = "stats"
            except httpx.TransportError as exc:
                transport_errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)
            statuses[f"{kind} {response.status_code}"] += 1

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await asyncio.gather(*(client_loop(client, random.Random(n)) for n in range(CONCURRENCY)))
    elapsed = time.monotonic() - started
    latencies.sort()
    total = sum(statuses.values()) + sum(transport_errors.values())
    failed = sum(n for key, n in statuses.items() if int(key.split()[1]) >= 500)
    failed += sum(transport_errors.values())
    return {
        "seconds": round(elapsed, 1),
        "concurrency": CONCURRENCY,
        "requests": total,
        "rps": round(total / elapsed, 1),
        "statuses": dict(sorted(statuses.items())),
        "transport_errors": dict(transport_errors),
        "error_rate": round(failed / total, 6) if total else None,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
    }


def main() -> None:
    url, seconds, out = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    result = asyncio.run(run(url, min(seconds, 600.0)))
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
