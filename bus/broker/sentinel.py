"""Redis Sentinel broker URLs, as kombu reads them: ``sentinel://h1:26379;sentinel://h2:26379/0``
names the sentinels (the first one's path, user and password are the master's database and
credentials); the master is the one they report under ``EVENTBUS_BROKER_SENTINEL_MASTER``.

kombu resolves the master in its own transport (:mod:`bus.broker.transport`); this module does
it for the bus's reads outside kombu (:mod:`bus.broker.inspector`): a client on the master
that asks the sentinels again whenever it has to connect, so it follows a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SCHEME = "sentinel://"
DEFAULT_PORT = 26379


def is_sentinel(url: str) -> bool:
    return url.startswith(SCHEME)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What a ``sentinel://`` broker URL says."""

    nodes: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def parse(url: str) -> SentinelURL:
    """The sentinels of ``url`` and the master's database and credentials (its first part's)."""
    parts = [urlsplit(part) for part in url.split(";") if part]
    if not parts or any(p.scheme != "sentinel" or not p.hostname for p in parts):
        raise ValueError(f"not a sentinel:// URL: {url!r}")
    nodes = tuple((str(p.hostname), p.port or DEFAULT_PORT) for p in parts)
    first = parts[0]
    path = first.path.strip("/")
    return SentinelURL(
        nodes=nodes,
        db=int(path) if path else 0,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )


class MasterClient:
    """A client of the master ``master`` that the sentinels of ``url`` report, with
    ``connection_kwargs`` (timeouts, retry) on its connections and ``sentinel_kwargs`` on those
    to the sentinels; a connection it makes goes to the master as they report it then."""

    def __init__(
        self,
        url: str,
        master: str,
        *,
        sentinel_kwargs: dict[str, Any],
        **connection_kwargs: Any,
    ) -> None:
        parsed = parse(url)
        self._sentinel = Sentinel(list(parsed.nodes), sentinel_kwargs=sentinel_kwargs)
        self.client: redis.Redis = self._sentinel.master_for(
            master,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            **connection_kwargs,
        )

    def close(self) -> None:
        self.client.close()
        self._sentinel.close()  # its connections to the sentinels
