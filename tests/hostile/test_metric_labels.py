"""Publisher-chosen label values (``event_type``, ``target_module``) cannot grow ``/metrics``
without bound: past EVENTBUS_METRICS_MAX_* values per process they are counted as ``other``."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.testclient import TestClient

from bus.observability import metrics
from bus.runtime import Runtime
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TokenFactory, auth

pytestmark = pytest.mark.integration

UNIQUE = 300
SERIES = re.compile(r"^eventbus_events_published_total\{.*\} ", re.MULTILINE)


def published_series(client: TestClient) -> tuple[int, int]:
    """(series of the published counter, lines of the whole /metrics page: every series)."""
    page = client.get("/metrics").text
    return len(SERIES.findall(page)), len(page.splitlines())


def publish_unique(client: TestClient, tok: str, count: int) -> None:
    run = uuid.uuid4().hex[:8]
    for n in range(count):
        body = {**SEED_PUBLISH_BODY, "event_type": f"t{run}_{n}", "target_module": f"m{run}{n}"}
        assert client.post("/system/events", headers=auth(tok), json=body).status_code == 201


def test_unique_event_types_and_modules_do_not_grow_metrics(
    runtime: Runtime, client: TestClient, token: TokenFactory
) -> None:
    tok = token()
    # Given a process that has published 300 events, each of its own type and module
    publish_unique(client, tok, UNIQUE)
    client.get("/metrics")  # its own request series exists from here on
    series, lines = published_series(client)
    # When 300 more arrive, all new
    publish_unique(client, tok, UNIQUE)
    # Then /metrics holds no new series: the new values are all counted as "other"
    assert published_series(client) == (series, lines)
    page = client.get("/metrics").text
    print(f"/metrics after {2 * UNIQUE} unique types and modules: {len(page)} bytes")
    assert 'event_type="other"' in page and 'target_module="other"' in page


def test_a_label_budget_keeps_allowed_and_first_values() -> None:
    budget = metrics.LabelBudget(limit=2)
    budget.allow("handled")
    assert [budget(v) for v in ("a", "b", "c", "handled", "a")] == [
        "a",
        "b",
        metrics.OTHER,
        "handled",
        "a",
    ]
