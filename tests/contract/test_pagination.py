"""Pages: every event exactly once, newest first (id breaks ties), filters AND-ed."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus.auth import Principal
from bus.publish import service
from bus.runtime import Runtime
from tests.support.factories import SEED_PUBLISH_BODY, event_values, make_events
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

EVENTS = "/system/events"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    """The order the API promises: created_at descending, then id descending."""
    ordered = sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    return [str(r["id"]) for r in ordered]


def test_250_events_in_pages_of_100_each_exactly_once(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    # Given 250 events of tenant A, many sharing their created_at (five to a second), and
    # tenant B's events in between
    rows = make_events(
        runtime, (event_values(created_at=T0 + timedelta(seconds=i // 5)) for i in range(250))
    )
    make_events(runtime, (event_values(tenant_id=TENANT_B, created_at=T0) for _ in range(20)))
    h = auth(token())
    # When the three pages are read at limit 100
    pages = [
        client.get(EVENTS, headers=h, params={"page": page, "limit": 100}).json()
        for page in (1, 2, 3)
    ]
    # Then they hold 100, 100 and 50 events, all of them once, newest first, and say 250
    assert [len(p["events"]) for p in pages] == [100, 100, 50]
    assert [(p["page"], p["limit"], p["total"]) for p in pages] == [
        (1, 100, 250),
        (2, 100, 250),
        (3, 100, 250),
    ]
    seen = [e["id"] for p in pages for e in p["events"]]
    assert seen == newest_first(rows)
    # And a page past the end is empty but still counts them all
    after = client.get(EVENTS, headers=h, params={"page": 4, "limit": 100}).json()
    assert (after["events"], after["total"]) == ([], 250)


def test_events_published_in_the_same_instant_page_by_id(
    client: TestClient, runtime: Runtime, token: TokenFactory
) -> None:
    # Given 30 events published through the service at one fixed instant
    principal = Principal("publisher", TENANT_A, frozenset(), False, "system")
    with runtime.unit_of_work() as uow:
        ids = [
            service.publish(uow, runtime.settings, principal, None, SEED_PUBLISH_BODY, now=T0)["id"]
            for _ in range(30)
        ]
        uow.commit()
    h = auth(token())
    # When they are read 7 at a time
    seen: list[str] = []
    for page in range(1, 6):
        body = client.get(EVENTS, headers=h, params={"page": page, "limit": 7}).json()
        assert body["total"] == 30
        seen += [e["id"] for e in body["events"]]
    # Then the id decides their order, and no page repeats or skips one
    assert seen == sorted(ids, key=uuid.UUID, reverse=True)


# Two values of each filterable field; one event for each of the 32 combinations.
FILTER_VALUES = {
    "event_type": ("inventory_updated", "delivery_assigned"),
    "source_module": ("inventory", "logistics"),
    "target_module": ("warehouse", "notifications"),
    "status": ("pending", "failed"),
    "entity_type": ("inventory_item", "delivery"),
}


@pytest.fixture
def grid(runtime: Runtime) -> list[dict[str, Any]]:
    """Tenant A's 32 events, every combination of FILTER_VALUES, plus copies in tenant B."""
    combos = [
        dict(zip(FILTER_VALUES, values, strict=True))
        for values in itertools.product(*FILTER_VALUES.values())
    ]
    rows = make_events(
        runtime,
        (
            event_values(created_at=T0 + timedelta(minutes=i), **combo)
            for i, combo in enumerate(combos)
        ),
    )
    make_events(runtime, (event_values(tenant_id=TENANT_B, **combo) for combo in combos))
    return rows


FILTER_SETS = [
    names
    for size in range(1, len(FILTER_VALUES) + 1)
    for names in itertools.combinations(FILTER_VALUES, size)
]


@pytest.mark.parametrize("names", FILTER_SETS, ids="+".join)
def test_filters_combine_with_and(
    client: TestClient, token: TokenFactory, grid: list[dict[str, Any]], names: tuple[str, ...]
) -> None:
    # Given filters on these fields, each on its second value
    params = {name: FILTER_VALUES[name][1] for name in names}
    # When the list is read with them
    body = client.get(EVENTS, headers=auth(token()), params=params).json()
    # Then exactly tenant A's events matching all of them come back, newest first
    expected = [r for r in grid if all(r[name] == value for name, value in params.items())]
    assert len(expected) == 2 ** (len(FILTER_VALUES) - len(names))
    assert [e["id"] for e in body["events"]] == newest_first(expected)
    assert body["total"] == len(expected)


def test_a_filter_matches_whole_values_only(
    client: TestClient, token: TokenFactory, grid: list[dict[str, Any]]
) -> None:
    for params in (
        {"event_type": "inventory"},
        {"event_type": "inventory_updated%"},
        {"target_module": "WAREHOUSE"},
        {"entity_type": "delivery "},
    ):
        body = client.get(EVENTS, headers=auth(token()), params=params).json()
        assert body["total"] == 0, params
