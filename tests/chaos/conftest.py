"""The chaos suite's PostgreSQL cluster (its own, on a free port: scenarios kill it) and a
factory of :class:`Stack`, stopped after each scenario."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.harness import Stack, StackFactory, ledger_database
from tests.support.servers import PostgresCluster

DATABASE = "chaos"


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().init().start()
    try:
        ledger_database(cluster.admin_url, cluster.url(DATABASE), DATABASE)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def stack(pg: PostgresCluster) -> Iterator[StackFactory]:
    """``stack(**settings)``: a bus of the scenario's own over the suite's cluster."""
    made: list[Stack] = []

    def make(**overrides: Any) -> Stack:
        instance = Stack(pg, DATABASE, **overrides)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.stop()
