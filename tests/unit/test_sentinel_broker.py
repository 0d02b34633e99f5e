"""A ``sentinel://`` broker URL: what it says, and the bus's transport, options and inspector on
it (no server: nothing here connects, or it connects to a port nothing listens on)."""

from __future__ import annotations

import time

import pytest
from redis.sentinel import MasterNotFoundError

from bus.broker import transport
from bus.broker.celery_app import make_celery
from bus.broker.inspector import BrokerInspector
from bus.broker.sentinel import parse
from bus.observability.tracing import messaging_system
from bus.settings import Settings
from tests.support.processes import free_port

URL = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3/2"


def _settings(**values: object) -> Settings:
    return Settings(jwt_secret="x" * 40, **values)  # type: ignore[arg-type]


def test_the_url_names_every_sentinel_and_the_masters_database() -> None:
    parsed = parse(URL)

    assert parsed.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert parsed.db == 0  # the first part's path, as kombu reads it
    with_credentials = parse("sentinel://u:p%40ss@h:1/3")
    assert (with_credentials.db, with_credentials.username, with_credentials.password) == (
        3,
        "u",
        "p@ss",
    )


def test_a_url_mixing_schemes_is_refused() -> None:
    with pytest.raises(ValueError, match="sentinel://"):
        parse("sentinel://h:26379;redis://h:6379")


def test_celery_uses_the_bus_channel_behind_sentinel() -> None:
    # Given the broker behind Sentinel, its master named by the setting
    app = make_celery(_settings(broker_url=URL, broker_sentinel_master="orders"))
    options = app.conf.broker_transport_options
    # Then the bus's channel (bounded wake-ups, dead letters) runs on kombu's Sentinel pools,
    # with the master's name and the broker's socket options, on the sentinels' sockets too
    assert app.conf.broker_transport == transport.SENTINEL_TRANSPORT
    assert options["master_name"] == "orders"
    assert options["socket_keepalive_options"]
    assert (
        options["sentinel_kwargs"]["socket_keepalive_options"]
        == (options["socket_keepalive_options"])
    )
    with app.connection_for_write() as conn:
        assert conn.transport.Channel is transport.SentinelChannel
        assert issubclass(transport.SentinelChannel, transport.Channel)
        assert conn.alt == URL.split(";")


def test_plain_redis_keeps_no_sentinel_option() -> None:
    options = make_celery(_settings()).conf.broker_transport_options

    assert "master_name" not in options and "sentinel_kwargs" not in options


def test_traces_name_the_system_redis() -> None:
    assert messaging_system(URL) == "redis"


def test_the_inspector_asks_the_sentinels_and_fails_fast_without_them() -> None:
    # Given sentinels that are all down (a port nothing listens on)
    inspector = BrokerInspector(f"sentinel://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        # Then a probe fails at once, naming the master it found none of
        started = time.monotonic()
        with pytest.raises(MasterNotFoundError, match="mymaster"):
            inspector.ping()
        assert time.monotonic() - started < 2
    finally:
        inspector.close()
