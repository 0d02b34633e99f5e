"""A link between hosts made slow: a userspace TCP proxy that holds each chunk it forwards for a
delay drawn per chunk (jitter), and can cap a direction's bandwidth.

The kernel here has no ``netem`` qdisc, so a link's delay comes from this proxy; its packet loss
comes from iptables (:meth:`tests.faults.network.Network.lossy`), which drops real packets and
leaves retransmission to the kernels, as a lossy link does. Partitions and half-open connections
stay iptables rules too: a proxy between two hosts keeps both TCP connections alive (it
acknowledges), so a keepalive would never fail through it.

Run inside the server's host, one process for several links::

    python -m tests.faults.proxy CONTROL LISTEN_HOST:PORT=TARGET_HOST:PORT ...

``CONTROL`` is a JSON file read again whenever it changes (checked every 0.1 s):
``{"delay": [0.1, 0.3], "bandwidth": 0}`` (seconds, bytes per second per direction of a
connection; 0 is unlimited). A missing or empty file means no delay. Chunks of one direction
keep their order: a chunk waits for the one before it, as TCP's bytes do.

A trap catches one PostgreSQL ``COMMIT`` of one client host, for a partition at that instant:
``{"trap": {"client": "10.231.0.13", "min_bytes": 1000, "deliver": true}}``. The first chunk
from that address holding ``COMMIT`` that ends a transaction of ``min_bytes`` sent at least is
forwarded (``deliver``: the server commits, its answer never arrives) or
not (the transaction stays open until the server loses the connection, ``orphan_after``
seconds later, as its keepalives would end it), and that connection goes silent both ways.
Then the proxy writes ``CONTROL.trapped`` (the test cuts the link with iptables: through a
proxy, whose kernel still acknowledges, the client would wait forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 65536
QUEUED = 64  # chunks held per direction: beyond it the proxy stops reading (TCP backpressure)


@dataclass
class Shape:
    """How the links behave now (one per proxy process, changed by the control file)."""

    low: float = 0.0
    high: float = 0.0
    bandwidth: float = 0.0
    trap: dict[str, Any] | None = None
    trapped: Path | None = None

    def delay(self) -> float:
        return random.uniform(self.low, self.high) if self.high > 0 else 0.0


def write_control(
    path: Path,
    delay: tuple[float, float] | None,
    bandwidth: float = 0.0,
    trap: dict[str, Any] | None = None,
) -> None:
    """Set the links of the proxy reading ``path`` (``delay`` None: no delay)."""
    low, high = delay or (0.0, 0.0)
    tmp = path.with_suffix(".tmp")
    control = {"delay": [low, high], "bandwidth": bandwidth, "trap": trap}
    tmp.write_text(json.dumps(control))
    tmp.replace(path)  # atomic: the proxy never reads half a file


async def _watch(path: Path, shape: Shape) -> None:
    seen = 0.0
    while True:
        with contextlib.suppress(OSError, ValueError):
            mtime = path.stat().st_mtime
            if mtime != seen:
                seen = mtime
                control = json.loads(path.read_text() or "{}")
                shape.low, shape.high = (float(x) for x in control.get("delay", (0, 0)))
                shape.bandwidth = float(control.get("bandwidth", 0))
                shape.trap = control.get("trap")
        await asyncio.sleep(0.1)


@dataclass
class _Link:
    """One proxied connection: its client's address, and whether a trap silenced it."""

    client: str
    upstream: asyncio.StreamWriter
    silent: bool = False
    sent: int = 0
    """Bytes sent in the present transaction (since the last COMMIT or ROLLBACK)."""


def _sprung(link: _Link, data: bytes, shape: Shape) -> bool:
    """Whether ``data`` (client to server) springs the trap; if so the link is silent from now
    on, and the chunk is forwarded only when the trap says ``deliver``."""
    trap = shape.trap
    if not trap or trap.get("client") != link.client:
        return False
    link.sent += len(data)
    if b"ROLLBACK" in data:
        link.sent = 0
    if b"COMMIT" not in data:
        return False
    sent, link.sent = link.sent, 0
    if sent < int(trap.get("min_bytes", 0)):
        return False
    shape.trap = None  # once
    link.silent = True
    if trap.get("deliver"):
        link.upstream.write(data)
    else:
        orphan_after = float(trap.get("orphan_after", 10.0))
        asyncio.get_running_loop().call_later(orphan_after, link.upstream.close)
    if shape.trapped is not None:
        shape.trapped.write_text(json.dumps({"client": link.client, "at": time.time()}))
    return True


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    shape: Shape,
    link: _Link,
    upstream: bool,
) -> None:
    """Forward one direction: each chunk held for its delay, never before the chunk before it."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUED)

    async def read() -> None:
        last = 0.0
        try:
            while data := await reader.read(CHUNK):
                if link.silent or (upstream and _sprung(link, data, shape)):
                    continue  # a silenced link: what is sent vanishes
                last = max(time.monotonic() + shape.delay(), last)
                await queue.put((last, data))
        except OSError:
            pass
        finally:
            await queue.put(None)

    async def write() -> None:
        while item := await queue.get():
            due, data = item
            wait = due - time.monotonic()
            if shape.bandwidth > 0:
                wait = max(wait, 0.0) + len(data) / shape.bandwidth
            if wait > 0:
                await asyncio.sleep(wait)
            if link.silent:
                continue
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not link.silent:
            writer.write_eof()

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()


async def _listen(listen: tuple[str, int], target: tuple[str, int], shape: Shape) -> asyncio.Server:
    async def connected(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*target)
        except OSError:
            c_writer.close()
            return
        link = _Link(c_writer.get_extra_info("peername")[0], s_writer)
        try:
            # Either direction failing ends the connection both ways, as a reset would.
            await asyncio.gather(
                _pipe(c_reader, s_writer, shape, link, upstream=True),
                _pipe(s_reader, c_writer, shape, link, upstream=False),
            )
        except OSError:
            pass
        finally:
            for w in (c_writer, s_writer):
                w.close()

    return await asyncio.start_server(connected, *listen, reuse_address=True)


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def main(control: Path, links: list[str]) -> None:
    shape = Shape(trapped=control.with_name(control.name + ".trapped"))
    servers = []
    for link in links:
        listen, target = link.split("=", 1)
        servers.append(await _listen(_address(listen), _address(target), shape))
    print("proxy ready", flush=True)
    await asyncio.gather(_watch(control, shape), *(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
