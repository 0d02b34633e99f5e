"""kombu's Redis transport, with one client object per channel instead of one per command.

kombu's Redis channel wraps its connection pool in a new ``redis.Redis`` for every publish, ack
and restore; building one copies redis-py's table of ~200 response callbacks, which cost more
CPU than the LPUSH itself (measured: ~5% of the API's CPU per publish and ~6% of a worker's per
event). A client over a connection pool is safe to share between threads, so each channel keeps
one, remade whenever the channel replaces its pool (after a lost connection). ``sentinel://``
broker URLs get the same channel over kombu's Sentinel pools (``SentinelTransport``).
"""

from __future__ import annotations

import json
from queue import Empty
from typing import Any

from kombu.exceptions import KombuError
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bus.broker import deadletter
from bus.broker.queues import WAKE_BOUND_HEADER


class QoS(kombu_redis.QoS):
    """kombu's, except that a delivery whose ack or reject failed still frees its place in the
    prefetch window. kombu skips that when the Redis call raises (a dead connection): with one
    message prefetched (a solo worker) ``can_consume()`` then stayed false for good, the
    consumer stopped reading its BRPOP connection, never saw that one die too, and consumed
    nothing again (tests/faults, a half-open broker connection: "Couldn't ack", then silence).
    The message stays in the unacked index and comes back by the visibility timeout."""

    def ack(self, delivery_tag: Any) -> None:
        try:
            self._remove_from_indices(delivery_tag).execute()  # type: ignore[no-untyped-call]
        finally:
            super(kombu_redis.QoS, self).ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)  # type: ignore[no-untyped-call]
            else:
                self._remove_from_indices(delivery_tag).execute()  # type: ignore[no-untyped-call]
        finally:
            super(kombu_redis.QoS, self).ack(delivery_tag)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    """Also refuses list items that are not kombu envelopes (:mod:`bus.broker.deadletter`).

    kombu json-decodes each item it pops in the transport, before a ``Message`` exists, so a
    ``LPUSH eventbus.warehouse garbage`` raised out of the consumer loop and killed the worker
    ("Unrecoverable error: JSONDecodeError"). Here the item is checked first: a bad one goes,
    as popped, to ``<queue>.dead``, and the read goes on.
    """

    QoS = QoS
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if self._pool is None and getattr(self.connection, "client", None) is None:
            # Closed after a lost connection: the channel's pools are disconnected and the
            # transport has let go of its connection when kombu restores the unacknowledged
            # messages. Rebuilding a pool then raises AttributeError, which the consumer's
            # ignore_errors does not swallow: the worker died ("Unrecoverable error") when Redis
            # died while it held a message (celery/kombu#970, #582). The last client's pool was
            # disconnected, not destroyed: it reconnects on use, or raises the connection error
            # the consumer expects and recovers from (the message then comes back by the
            # visibility timeout, and the relay re-sends its event in any case).
            if client is None:
                raise RedisConnectionError("the channel is closed")
            return client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7.0's _brpop_read (pinned), with the item checked before it is delivered.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            raw_dest, item = dest__item
            text = raw_dest.decode() if isinstance(raw_dest, bytes) else str(raw_dest)
            dest = text.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            envelope = deadletter.decode_envelope(item)
            if isinstance(envelope, str):
                self.dead_letter(dest, item, envelope)
                return True
            # The list it came from, not what the envelope claims: the consumer files refusals
            # under this name, and kombu restores (and Celery retries) through the anonymous
            # exchange to it, never through an exchange's bindings.
            info = envelope["properties"]["delivery_info"]
            info["exchange"], info["routing_key"] = "", dest
            self.connection._deliver(envelope, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        # A wake-up (every bus message) is pushed only while fewer than its bound wait on the
        # list, in one round trip (a script): what waits no longer grows with the backlog.
        bound = _bound(message)
        if bound is None or "_publish_batch" in kwargs:
            super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
            return
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))  # type: ignore[no-untyped-call]
        with self.conn_or_acquire() as client:
            client.eval(_BOUNDED_LPUSH, 1, key, dumps(message), bound)  # type: ignore[no-untyped-call]

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        # Broadcasts (worker control) arrive by PUBLISH; kombu skips those that are not JSON,
        # but JSON that is not an envelope would raise in the loop. Nothing is kept of them.
        why = (
            deadletter.envelope_problem(message)
            if isinstance(message, dict)
            else "broadcast is not an envelope"
        )
        if why is not None:
            deadletter.reject(exchange, _dumps(message), why, None)
            return True
        return bool(super()._deliver_fanout_message(message, exchange))  # type: ignore[no-untyped-call]

    def dead_letter(self, queue: str, raw: bytes | str, reason: str) -> None:
        """Keep ``raw`` on ``<queue>.dead`` (newest first, capped), log it and count it."""
        dead = deadletter.dead_letter_queue(queue)
        kept: str | None = dead
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline()
                pipe.lpush(dead, raw)
                pipe.ltrim(dead, 0, deadletter.DEAD_LETTER_CAP - 1)
                pipe.execute()
        except (RedisError, KombuError, OSError):
            kept = None
        deadletter.reject(queue, raw, reason, kept)


_BOUNDED_LPUSH = (
    "if redis.call('LLEN', KEYS[1]) < tonumber(ARGV[2]) then "
    "return redis.call('LPUSH', KEYS[1], ARGV[1]) end return 0"
)


def _bound(message: Any) -> int | None:
    headers = message.get("headers") if isinstance(message, dict) else None
    bound = headers.get(WAKE_BOUND_HEADER) if isinstance(headers, dict) else None
    return bound if type(bound) is int and bound > 0 else None


def _dumps(message: Any) -> str:
    try:
        return json.dumps(message)
    except (TypeError, ValueError):
        return repr(message)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """:class:`Channel` on the master Redis Sentinel reports (kombu's ``SentinelChannel``
    makes the pools). Not kombu's own channel: its plain ``LPUSH`` would let wake-ups grow with
    the backlog, and an item that is not an envelope would kill the worker again."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"
