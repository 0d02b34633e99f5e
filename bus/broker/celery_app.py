"""Builds the Celery app from settings; tasks live in ``workers``."""

from __future__ import annotations

import socket
from typing import Any

from celery import Celery

from bus.broker import transport
from bus.broker.celery_message import Bounds
from bus.broker.queues import queue_name
from bus.settings import Settings

# A send that cannot reach the broker gives up after one quick reconnect (which refreshes a
# pooled connection the broker dropped) instead of kombu's seconds of retries: the event is
# already safe in the database, unstamped, and the relay sends it once the broker is back.
_FAIL_FAST = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


INFRA_RETRY_MAX_SECONDS = 60.0
"""The longest wait before a delivery that met a database error runs again (workers/tasks.py)."""
BOUNDS_SETTING = "eventbus_message_bounds"
"""The app setting the worker's intake reads (:func:`message_bounds`)."""


def message_bounds(settings: Settings) -> Bounds:
    """What the bus's own messages carry at most: its longest countdown, its time limit."""
    return Bounds(
        longest_delay=max(settings.retry_max_seconds, INFRA_RETRY_MAX_SECONDS),
        time_limit=float(settings.task_time_limit_seconds),
    )


def keepalive_options(timeout: float) -> dict[int, int]:
    """TCP options (redis-py sets each on its sockets) under which a broker connection whose
    peer went silent fails within about ``timeout`` seconds. Found by the network suite
    (tests/faults, half-open connection): kombu's BRPOP check drops a dead consumer connection
    after 31 s, then the acknowledgement's connection, as dead, blocked for ``socket_timeout``
    (30 s) more, and the publishes' after it: over a minute without consuming. Keepalive probes
    end a connection waiting for a reply that never comes (BRPOP), TCP_USER_TIMEOUT one whose
    sent data is never acknowledged (a PING, an ack, a publish)."""
    idle = max(1, round(timeout / 2))
    options = {
        socket.TCP_KEEPIDLE: idle,
        socket.TCP_KEEPINTVL: max(1, round(timeout / 6)),
        socket.TCP_KEEPCNT: 3,
    }
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
    if user_timeout is not None:
        options[user_timeout] = int(timeout * 1000)
    return options


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options that keep Redis from redelivering waiting work or hanging on dead TCP."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        keepalive = keepalive_options(settings.broker_network_timeout_seconds)
        options: dict[str, Any] = {
            **_FAIL_FAST,
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_timeout": 30,
            "socket_connect_timeout": 3,
            "socket_keepalive": True,
            "socket_keepalive_options": keepalive,
            "health_check_interval": 25,
        }
        if url.startswith("sentinel://"):
            options["master_name"] = settings.broker_sentinel_master
            # Each connection to the master first asks the sentinels where it is. A sentinel
            # that does not answer within 3 s is passed over for the next, rather than holding
            # the reconnect for the 30 s the master's sockets allow a reply.
            options["sentinel_kwargs"] = {
                "socket_timeout": 3,
                "socket_connect_timeout": 3,
                "socket_keepalive": True,
                "socket_keepalive_options": keepalive,
            }
        return options
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        # Wait for RabbitMQ to confirm each publish: an unconfirmed one can vanish in a crash
        # while the bus believes it sent, and only the relay's lease would notice.
        # py-amqp's own socket options (keepalive probes after 60 s idle, 9 of them 10 s apart)
        # left a silent link unnoticed for 150 s: the same bound as Redis's sockets instead.
        return {
            **_FAIL_FAST,
            "confirm_publish": True,
            "socket_settings": keepalive_options(settings.broker_network_timeout_seconds),
        }
    if url.startswith("memory://"):
        # Virtual transports poll; the embedded broker should feel instant.
        return {"polling_interval": 0.02}
    if url.startswith(("sqla+", "sqlalchemy+")):
        return {"polling_interval": 0.1}
    return {}


def make_celery(settings: Settings) -> Celery:
    """The Celery app of the bus, with the settings that make delivery at least once."""
    app = Celery("eventbus", broker=settings.broker_url, set_as_current=False)
    options = broker_options(settings)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        app.conf.broker_transport = transport.TRANSPORT  # one Redis client per channel
    elif settings.broker_url.startswith("sentinel://"):
        app.conf.broker_transport = transport.SENTINEL_TRANSPORT  # the same, behind Sentinel
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        visibility_timeout=settings.visibility_timeout_seconds,
        task_acks_late=True,
        # A lost pool child is counted in PostgreSQL by the worker (workers/tasks.py) rather
        # than retried by Celery, whose count would not be ours and, with no max_retries,
        # would loop on a handler that kills its process. Neither requeue: that loops too.
        task_retry_on_worker_lost=False,
        task_reject_on_worker_lost=False,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=30,
        task_time_limit=settings.task_time_limit_seconds,
        # The soft limit warns the handler (SoftTimeLimitExceeded) before the hard kill: 10 s
        # early, or a tenth early for short limits (a fixed "- 10" left 1 s of an 11 s limit).
        task_soft_time_limit=settings.task_time_limit_seconds
        - min(10.0, settings.task_time_limit_seconds / 10),
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue_name("default", settings.queue_prefix),
        task_create_missing_queues=True,
        # Flower's view of each task; each event is one more Redis publish (EVENTBUS_TASK_EVENTS).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        # A worker's remote-control queue, not exclusive to its connection: after a partition
        # RabbitMQ may still hold the dead connection when the worker reconnects, and the
        # exclusive queue's RESOURCE_LOCKED ended every worker (found by tests/faults). It is
        # still deleted 10 s after its worker's last consumer goes (control_queue_expires).
        control_queue_exclusive=False,
        enable_utc=True,
    )
    app.conf[BOUNDS_SETTING] = message_bounds(settings)
    return app
