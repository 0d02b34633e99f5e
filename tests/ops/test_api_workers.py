"""`eventbus api --workers 2` as a subprocess: whichever uvicorn worker answers a scrape, the
counters are the sum over both (prometheus_client's multiprocess mode, set up by the CLI)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bus.runtime import Runtime
from bus.settings import Settings
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import Proc, eventbus, eventbus_env, free_port
from tests.support.prometheus import parse, value
from tests.support.tokens import TokenFactory, auth

BURST = 40
STARTUP = 30.0


@pytest.fixture
def api(runtime: Runtime, settings: Settings) -> Iterator[tuple[Proc, str]]:
    port = free_port()
    proc = Proc(
        eventbus("api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
        eventbus_env(settings),
    )
    try:
        proc.wait_for_output("Application startup complete", STARTUP, count=2)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_two_uvicorn_workers_report_one_sum(api: tuple[Proc, str], token: TokenFactory) -> None:
    proc, base = api
    match = re.search(r"prometheus multiprocess files in (\S+?)[\"\s]", proc.output)
    assert match, proc.output[-2000:]
    metrics_dir = Path(match.group(1))
    assert metrics_dir.is_dir()

    # When a burst of publishes comes in over several connections at once
    headers = auth(token())

    def publish_some(count: int) -> list[int]:
        with httpx.Client(base_url=base, timeout=10) as client:
            return [
                client.post("/system/events", headers=headers, json=SEED_PUBLISH_BODY).status_code
                for _ in range(count)
            ]

    with ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(publish_some, [BURST // 8] * 8) for c in batch]
    assert codes == [201] * BURST

    # Then both worker processes counted some of it ...
    pids = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("histogram_*.db")}
    assert len(pids) == 2, sorted(pids)

    # ... and every scrape, whichever worker answers it, shows exactly the burst
    for _ in range(6):
        with httpx.Client(base_url=base, timeout=10) as client:  # a new connection each time
            response = client.get("/metrics")
        assert response.status_code == 200
        samples = parse(response.text)
        published = "eventbus_events_published_total"
        assert value(samples, published, target_module="warehouse") == BURST
        assert (
            value(
                samples,
                "eventbus_http_request_duration_seconds_count",
                method="POST",
                route="/system/events",
                status="201",
            )
            == BURST
        )

    # The directory the CLI made goes away with it
    assert proc.stop() == 0
    assert not metrics_dir.exists()
