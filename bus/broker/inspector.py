"""The broker seen from outside Celery, for operators: is it reachable, how long is each queue.

Short timeouts throughout: these answer probes and scrapes, which must fail fast rather than
wait on a broker that is down. Queue lengths are read on Redis (a queue is a list named after
it; behind Sentinel, on the master it reports); other brokers report none.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from bus.broker import sentinel
from bus.broker.deadletter import REASON_HEADER, check_raw, dead_letter_queue, preview

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_BINDING_PREFIX = "_kombu.binding."


class BrokerInspector:
    """Pings the broker and reads queue lengths, one connection pool per process."""

    def __init__(
        self, broker_url: str, timeout: float = 2.0, *, sentinel_master: str = "mymaster"
    ) -> None:
        self._url = broker_url
        self._timeout = timeout
        self._redis: redis.Redis | None = None
        self._master: sentinel.MasterClient | None = None
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # One immediate retry: a pooled connection to a restarted server fails once, then
            # the retry connects afresh (on Sentinel: to the master they report now, after a
            # failover). No backoff: a probe must answer quickly.
            "retry": Retry(NoBackoff(), 1),
            "health_check_interval": 0,
        }
        if sentinel.is_sentinel(broker_url):
            self._master = sentinel.MasterClient(
                broker_url,
                sentinel_master,
                sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
                **options,
            )
            self._redis = self._master.client
        elif broker_url.startswith(_REDIS_SCHEMES):
            self._redis = redis.Redis.from_url(broker_url, **options)

    @property
    def in_memory(self) -> bool:
        return self._url.startswith("memory://")

    def ping(self) -> None:
        """Return if the broker answers, raise otherwise."""
        if self._redis is not None:
            self._redis.ping()
            return
        if self.in_memory:
            return  # kombu's in-process transport: up as long as this process is
        with Connection(self._url, connect_timeout=self._timeout) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=self._timeout)

    def queues(self, prefix: str) -> list[str]:
        """Every queue with ``prefix`` the broker knows of (declared by a sender or a worker).

        On Redis, kombu keeps a binding set per declared queue, so an empty queue is still known
        (its gauge reads 0 rather than vanishing). Elsewhere: none.
        """
        if self._redis is None:
            return []
        keys = self._redis.scan_iter(match=f"{_BINDING_PREFIX}{prefix}*", count=1000)
        return sorted(_text(key).removeprefix(_BINDING_PREFIX) for key in keys)

    def depths(self, queues: Sequence[str]) -> dict[str, int] | None:
        """Messages waiting on each queue (not those a worker holds unacknowledged), or None
        when the broker cannot say."""
        if self._redis is None:
            return None
        pipe = self._redis.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        return {queue: int(n) for queue, n in zip(queues, pipe.execute(), strict=True)}

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` of what was refused on ``queue`` (newest first on Redis), left in
        place: on RabbitMQ they are fetched unacknowledged and requeued as the channel closes."""
        dead = dead_letter_queue(queue)
        if self._redis is not None:
            raw = self._redis.lrange(dead, 0, max(0, limit - 1)) if limit > 0 else []
            items = [item if isinstance(item, bytes) else item.encode() for item in raw]
            return [DeadLetter(item, check_raw(item)) for item in items]
        if self.in_memory:
            return []
        found: list[DeadLetter] = []
        with Connection(self._url, connect_timeout=self._timeout) as conn:  # type: ignore[no-untyped-call]
            channel = conn.channel()
            try:
                if not _amqp_queue_exists(conn, dead):
                    return []
                while len(found) < limit:
                    message = channel.basic_get(dead, no_ack=False)
                    if message is None:
                        break
                    headers = message.headers or {}
                    body = message.body if isinstance(message.body, bytes) else b""
                    found.append(DeadLetter(body, str(headers.get(REASON_HEADER, "?"))))
            finally:
                channel.close()  # unacknowledged: RabbitMQ puts them back
        return found

    def purge_dead_letters(self, queue: str) -> int:
        """Delete everything refused on ``queue``; returns how many items went."""
        dead = dead_letter_queue(queue)
        if self._redis is not None:
            pipe = self._redis.pipeline()
            pipe.llen(dead)
            pipe.delete(dead)
            count, _ = pipe.execute()
            return int(count)
        if self.in_memory:
            return 0
        with Connection(self._url, connect_timeout=self._timeout) as conn:  # type: ignore[no-untyped-call]
            if not _amqp_queue_exists(conn, dead):
                return 0
            return int(conn.default_channel.queue_purge(dead) or 0)

    def close(self) -> None:
        if self._master is not None:
            self._master.close()
        elif self._redis is not None:
            self._redis.close()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused message as kept, and why it was (or would now be) refused."""

    raw: bytes
    reason: str | None

    def line(self) -> str:
        """One JSON line, safe to print whatever the message held."""
        return json.dumps(
            {"bytes": len(self.raw), "reason": self.reason, "preview": preview(self.raw)},
            ensure_ascii=True,
        )


def _amqp_queue_exists(conn: Connection, name: str) -> bool:
    channel = conn.channel()  # type: ignore[no-untyped-call]
    try:
        channel.queue_declare(name, passive=True)
    except conn.channel_errors:  # 404: never declared, nothing was refused
        return False
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
