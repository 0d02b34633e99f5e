"""An ``amqp://`` broker: the bus's socket options on it and its workers' acknowledgements (no
RabbitMQ: the socket test connects to a listener of its own on the loopback)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from amqp.transport import Transport

from bus.broker.celery_app import make_celery
from bus.settings import Settings
from workers.intake import Consumer, _Heart

URL = "amqp://guest:guest@127.0.0.1:5672//"


def _options(**values: object) -> dict[str, Any]:
    settings = Settings(jwt_secret="x" * 40, broker_url=URL, **values)  # type: ignore[arg-type]
    options: dict[str, Any] = make_celery(settings).conf.broker_transport_options
    return options


def test_publishes_are_confirmed() -> None:
    assert _options()["confirm_publish"] is True


@pytest.mark.parametrize("timeout", [10.0, 30.0])
def test_a_silent_amqp_link_is_given_up_within_the_network_timeout(timeout: float) -> None:
    opts = _options(broker_network_timeout_seconds=timeout)["socket_settings"]

    # data never acknowledged (a publish, an ack, a heartbeat), or a link idle and silent
    assert opts[socket.TCP_USER_TIMEOUT] == int(timeout * 1000)
    probes = opts[socket.TCP_KEEPIDLE] + opts[socket.TCP_KEEPINTVL] * opts[socket.TCP_KEEPCNT]
    assert probes <= timeout + 1  # about the timeout (whole seconds)


def test_py_amqp_sets_them_on_its_socket() -> None:
    opts = _options(broker_network_timeout_seconds=12)["socket_settings"]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        # kombu hands the transport options to amqp.Connection, which hands these to this
        link = Transport(f"127.0.0.1:{listener.getsockname()[1]}", 1, socket_settings=opts)
        link.connect()
        try:
            assert link.sock is not None
            assert link.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12000
            assert link.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 6
            assert link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        finally:
            link.close()


class _Hub:
    def __init__(self) -> None:
        self.queued: list[Callable[[], Any]] = []

    def call_soon(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        self.queued.append(callback)
        return callback


def _consumer(loop_thread: int, driver: str = "amqp") -> Consumer:
    consumer: Consumer = object.__new__(Consumer)  # only what call_soon_ack reads
    consumer.hub = _Hub()
    consumer._loop_thread = loop_thread
    consumer.connection = SimpleNamespace(transport=SimpleNamespace(driver_type=driver))
    return consumer


def test_an_ack_on_the_loops_thread_is_sent_at_once() -> None:
    # Given the worker's consumer on its event loop's thread (a solo pool runs tasks there)
    consumer = _consumer(threading.get_ident())
    sent: list[str] = []
    # When a task's message is acknowledged
    consumer.call_soon_ack(sent.append, "ack")
    # Then the ack goes now, not after the hub's next poll (the broker sends no next message
    # before it, with one prefetched)
    assert sent == ["ack"]
    assert consumer.hub.queued == []


def test_an_ack_from_another_thread_waits_for_the_loop() -> None:
    consumer = _consumer(threading.get_ident() + 1)  # a thread pool's thread: not the loop's
    sent: list[str] = []

    consumer.call_soon_ack(sent.append, "ack")

    assert sent == []  # py-amqp is not thread-safe: the loop sends it
    consumer.hub.queued[0]()
    assert sent == ["ack"]


def test_a_redis_ack_waits_for_the_loop_even_on_its_thread() -> None:
    # On Redis an ack that meets a dead connection must fail the loop (which reconnects at
    # once), as Celery's own deferred ack does
    consumer = _consumer(threading.get_ident(), driver="redis")
    sent: list[str] = []

    consumer.call_soon_ack(sent.append, "ack")

    assert sent == []
    consumer.hub.queued[0]()
    assert sent == ["ack"]


def test_a_workers_control_queue_is_not_held_by_one_connection() -> None:
    # RabbitMQ may still hold a partitioned worker's old connection when it reconnects: an
    # exclusive queue would refuse the new one (RESOURCE_LOCKED) and end the worker
    settings = Settings(jwt_secret="x" * 40, broker_url=URL)
    queue = make_celery(settings).control.mailbox.get_queue("eventbus-1@host")

    assert not queue.exclusive
    assert queue.auto_delete and queue.expires == 10.0  # still gone once its worker is


class _Eventer:
    enabled = True

    def __init__(self) -> None:
        self.on_enabled: set[Any] = set()
        self.on_disabled: set[Any] = set()
        self.sent: list[tuple[str, bool]] = []

    def send(self, event: str, retry: bool = False, **fields: Any) -> None:
        self.sent.append((event, retry))


def test_the_workers_heartbeat_event_is_sent_once_not_retried_until_the_broker_answers() -> None:
    # Celery's own retries it in the worker's event loop: a partition stopped the loop there
    assert "workers.intake:Heart" in Consumer.Blueprint.default_steps
    assert "celery.worker.consumer.heart:Heart" not in Consumer.Blueprint.default_steps
    eventer = _Eventer()

    _Heart(None, eventer)._send("worker-heartbeat")

    assert eventer.sent == [("worker-heartbeat", False)]
