"""Unit tests need no server: a unit test that asks for the run's database (through
``settings``, ``runtime``, ``client``…) fails, naming where it belongs instead."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def database_url() -> str:
    pytest.fail("a unit test needs no server: one on PostgreSQL belongs in contract/ or further")
