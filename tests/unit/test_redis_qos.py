"""The bus's Redis QoS: a delivery whose ack failed on a dead connection still frees its place
in the prefetch window (kombu's kept it, and a solo worker never consumed again)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bus.broker.transport import Channel, QoS


def _qos_holding(tag: str) -> QoS:
    qos = QoS(SimpleNamespace(do_restore=False), prefetch_count=1)
    qos._delivered[tag] = SimpleNamespace()  # one message delivered, unacknowledged
    assert not qos.can_consume()
    return qos


def _dead(*_args: Any, **_kwargs: Any) -> Any:
    raise RedisConnectionError("Error while reading from socket: (110, 'Connection timed out')")


@pytest.mark.parametrize("settle", ["ack", "reject", "requeue"])
def test_a_failed_settle_still_frees_the_prefetch_window(settle: str) -> None:
    # Given a channel's QoS with its one prefetched message, and a dead Redis connection
    qos = _qos_holding("tag-1")
    qos._remove_from_indices = _dead  # type: ignore[method-assign]
    qos.restore_by_tag = _dead  # type: ignore[method-assign]
    # When the message is acknowledged (or rejected) and Redis cannot be told
    with pytest.raises(RedisConnectionError):
        if settle == "ack":
            qos.ack("tag-1")
        else:
            qos.reject("tag-1", requeue=settle == "requeue")
    # Then the error still reaches the caller, and the consumer may read again (its BRPOP
    # connection is read, found dead too, and the worker reconnects)
    assert qos.can_consume()
    assert "tag-1" in qos._dirty  # settled, as far as this process is concerned


def test_the_bus_channel_uses_it() -> None:
    assert Channel.QoS is QoS
