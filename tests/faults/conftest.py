"""The network suite's hosts (namespaces made for the session, removed after it), its
PostgreSQL cluster on the ``pg`` host, and a factory of :class:`NetStack`, stopped after each
scenario. Needs root (namespaces, iptables): skipped otherwise."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.harness import ledger_database
from tests.faults.harness import HOSTS, NetStack
from tests.faults.hosts import HostPostgres
from tests.faults.network import Network

DATABASE = "faults"


@pytest.fixture(scope="session")
def net() -> Iterator[Network]:
    if os.geteuid() != 0 or not shutil.which("iptables"):
        pytest.skip("the network suite needs root and iptables (.ci/run installs it)")
    network = Network(HOSTS).create()
    try:
        yield network
    finally:
        network.destroy()


@pytest.fixture(scope="session")
def pg(net: Network) -> Iterator[HostPostgres]:
    cluster = HostPostgres(net, "pg").init().start()
    try:
        ledger_database(cluster.admin_url, cluster.local_url(DATABASE), DATABASE)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def netstack(net: Network, pg: HostPostgres) -> Iterator[Any]:
    """``netstack(**settings)``: a bus spread over the hosts, over the session's cluster
    (``netstack(kind=SentinelStack)``: a :class:`NetStack` of another kind)."""
    made: list[NetStack] = []

    def make(kind: type[NetStack] = NetStack, **overrides: Any) -> NetStack:
        instance = kind(net, pg, DATABASE, **overrides)
        made.append(instance)
        return instance

    yield make
    net.heal()
    for instance in made:
        instance.stop()
