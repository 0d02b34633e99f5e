"""What uvicorn itself must refuse before the app sees a request: an oversized or slow head.

uvicorn's httptools protocol reads a request's line and headers without a size cap (an 80 MB
header was read whole) and with no deadline once the first byte arrived (its keep-alive timer
only covers idle connections). :class:`GuardedHttpProtocol` adds both; its refusals are the
API's envelope, with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from bus.settings import Settings, get_settings

log = logging.getLogger("eventbus.api")

HEADERS_TOO_LARGE = (431, "Request headers too large")
HEADER_TIMEOUT = (408, "Request timeout")


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings every API process runs with."""
    return {
        "http": f"{__name__}:GuardedHttpProtocol",
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        "server_header": False,  # names the server and its version to every scanner
    }


def _refusal(status: int, message: str) -> bytes:
    body = json.dumps({"success": False, "message": message}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-content-type-options: nosniff\r\n",
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


async def _headers_too_large(scope: Any, receive: Any, send: Any) -> None:
    """The app a request runs when its head was complete but over the cap."""
    status, message = HEADERS_TOO_LARGE
    body = json.dumps({"success": False, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on a request's head
    (``EVENTBUS_HTTP_MAX_HEADER_BYTES``, else 431) and a deadline to send all of it
    (``EVENTBUS_HTTP_HEADER_TIMEOUT_SECONDS`` from its first byte, or from the connection's
    opening; else 408, or a silent close when nothing was sent)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self._max_head = settings.http_max_header_bytes
        self._head_timeout = settings.http_header_timeout_seconds
        self._reading_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading_head and not self.transport.is_closing():
            # Counted per chunk while the head is incomplete: httptools buffers a header until
            # it ends, so this bounds what it holds (a chunk that also carries the end of a
            # pipelined request before it is counted whole: a cap a little early, never late).
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._refuse(*HEADERS_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self._max_head:
            app, self.app = self.app, _headers_too_large
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if self._head_bytes:
            self._refuse(*HEADER_TIMEOUT)
        else:
            self.transport.close()  # a connection that never sent a byte gets no answer

    def _refuse(self, status: int, message: str) -> None:
        log.info("request refused before the app: %s (%d)", message, status)
        self._cancel_head_timer()
        self.transport.write(_refusal(status, message))
        self.transport.close()
