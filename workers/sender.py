"""Webhook delivery's HTTP side: many POSTs at once from one process, over kept-alive
connections, each made only to an address the SSRF policy allows.

Why it is built this way:

* The workers are synchronous; HTTP waits are not. One event loop per process, on a daemon
  thread of its own (made anew after a fork), with one ``aiohttp`` session for its life: a
  list of requests crosses to the loop in one hop, each comes back as a future, and
  connections to a receiver are reused between deliveries (TLS handshakes are the cost).
* The policy is checked where the connection is made, not only when the URL was saved:
  the connector's resolver (:class:`CheckingResolver`) drops every address
  :meth:`~bus.webhooks.urls.UrlPolicy.address_allowed` refuses, so the connector only ever
  connects to checked addresses, and a name rebound to 127.0.0.1 after the endpoint was
  created reaches nothing. The connector does not resolve a literal address: those are
  checked before sending. No proxy from the environment, no redirect followed (a ``302`` to
  an inside address would walk around the check), no cookie kept (tenants may share a host).
* A receiver cannot hold the worker: a total timeout per request, at most
  ``max_body_bytes`` of an answer read (no decompression), and the error a user sees is one
  stable line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import ipaddress
import os
import socket
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from bus.settings import Settings
from bus.webhooks.urls import SCHEMES, UrlPolicy

ERROR_TEXT_CHARS = 200
"""Characters of a receiver's answer kept in an error."""
KEEPALIVE_SECONDS = 4.0
"""An idle connection is closed by the sender before the receiver does it (Node and uvicorn
close after 5 s): a reused connection the receiver is closing at that moment fails the request."""
DNS_CACHE_SECONDS = 5
"""How long a name's allowed addresses are reused (the cache holds checked answers only)."""
RETRY_AFTER_STATUSES = frozenset({429, 503})
NOT_ALLOWED = "URL not allowed"
HOST_NOT_FOUND = "URL host not found"


@dataclass(frozen=True, slots=True)
class Request:
    """One POST: ``key`` is the caller's (the sender never reads it)."""

    key: object
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """How a request ended. ``status`` is ``None`` when no HTTP answer came (timeout,
    connection error, refused by the policy); ``error`` is ``None`` when acknowledged, else
    one line for the user; ``retry_after`` is the wait a 429 or 503 asked for, in seconds;
    ``seconds`` how long the request took."""

    status: int | None
    error: str | None
    retry_after: float | None
    seconds: float

    @property
    def acknowledged(self) -> bool:
        """A 2xx: the receiver has the event."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        """A 410: the receiver asks never to be called again."""
        return self.status == 410


class AddressRefused(OSError):
    """Every address a name resolves to is refused by the policy."""

    def __init__(self, addresses: Sequence[str]) -> None:
        super().__init__(f"{NOT_ALLOWED}: {', '.join(addresses)}")


class HostNotFound(OSError):
    """A name resolves to no address."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{HOST_NOT_FOUND}: {host}")


class CheckingResolver(AbstractResolver):
    """The system's resolver (``getaddrinfo`` in a thread), less every address the policy
    refuses: what the connector connects to."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            found = await self._inner.resolve(host, port, family)
        except (OSError, UnicodeError) as exc:
            raise HostNotFound(host) from exc
        if not found:
            raise HostNotFound(host)
        allowed = [r for r in found if self._policy.address_allowed(r["host"])]
        if not allowed:
            raise AddressRefused(sorted({r["host"] for r in found}))
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` value in seconds from now: delta-seconds or an HTTP-date (a past
    date is 0); ``None`` when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _one_line(body: bytes) -> str:
    """The start of an answer's body as one printable line of at most ERROR_TEXT_CHARS."""
    text = body[: ERROR_TEXT_CHARS * 4].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(text.split())[:ERROR_TEXT_CHARS]


def _looks_literal(host: str) -> bool:
    """What the connector takes for an address and so does not resolve (aiohttp's test)."""
    return ":" in host or host.replace(".", "").isdigit()


def _literal_refusal(policy: UrlPolicy, host: str) -> str | None:
    """The error for a literal host the policy refuses (or that is no canonical address:
    ``127.1``); ``None`` for a name or an allowed address."""
    if not _looks_literal(host):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{NOT_ALLOWED}: {host}"
    if ":" not in host and str(address) != host:  # 010.0.0.1 and the like
        return f"{NOT_ALLOWED}: {host}"
    return None if policy.address_allowed(address) else f"{NOT_ALLOWED}: {host}"


_senders: weakref.WeakSet[Sender] = weakref.WeakSet()


class Sender:
    """Sends lists of requests at once; see the module's docstring. One per process is
    enough: its pool holds ``connections`` connections, ``per_host`` to one receiver."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        timeout: float = 15.0,
        max_body_bytes: int = 65536,
        connections: int = 256,
        per_host: int = 64,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.connections = connections
        self.per_host = min(per_host, connections)
        self._timeout_error = f"Timeout: no answer in {timeout:g} s"
        self._closed = False
        self._forget()
        _senders.add(self)

    def _forget(self) -> None:
        """No loop yet (at start, and in a forked child: the parent's thread is not there)."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Response]] = set()

    def send(self, requests: Sequence[Request]) -> list[concurrent.futures.Future[Response]]:
        """Start every request at once on the sender's loop; each future resolves to a
        :class:`Response`, never to an exception (a future the caller cancels before its
        request starts is not sent). RuntimeError once closed."""
        futures: list[concurrent.futures.Future[Response]] = [
            concurrent.futures.Future() for _ in requests
        ]
        if futures:
            loop = self._running_loop()
            loop.call_soon_threadsafe(self._start, list(requests), futures)
        return futures

    def close(self) -> None:
        """Stop the loop: requests under way end as cancelled, connections are closed."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                return
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            self._loop = self._thread = self._session = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._pid != os.getpid():
            self._forget()
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._closed:
                raise RuntimeError("the webhook sender is closed")
            if self._loop is None:
                loop = _new_loop()
                thread = threading.Thread(
                    target=_run, args=(loop,), name="webhook-sender", daemon=True
                )
                thread.start()
                self._session = asyncio.run_coroutine_threadsafe(self._open(), loop).result()
                self._thread, self._loop = thread, loop
            return self._loop

    async def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.connections,
            limit_per_host=self.per_host,
            resolver=CheckingResolver(self.policy),
            use_dns_cache=True,
            ttl_dns_cache=DNS_CACHE_SECONDS,
            keepalive_timeout=KEEPALIVE_SECONDS,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
            trust_env=False,
        )

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._session is not None:
            await self._session.close()

    def _start(
        self, requests: list[Request], futures: list[concurrent.futures.Future[Response]]
    ) -> None:
        """On the loop: a task per request, each settling its future when done."""
        loop = asyncio.get_running_loop()
        for request, future in zip(requests, futures, strict=True):
            if not future.set_running_or_notify_cancel():
                continue
            task = loop.create_task(self._deliver(request))
            self._tasks.add(task)
            task.add_done_callback(partial(self._settle, future))

    def _settle(
        self, future: concurrent.futures.Future[Response], task: asyncio.Task[Response]
    ) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            future.set_result(Response(None, "Cancelled: the sender was closed", None, 0.0))
        elif (exc := task.exception()) is not None:  # _deliver lets only BaseException out
            future.set_result(Response(None, f"{type(exc).__name__}: {exc}", None, 0.0))
        else:
            future.set_result(task.result())

    async def _deliver(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            status, error, retry_after = await self._post(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes the request's answer
            status, error, retry_after = None, self._describe(exc, request.url), None
        return Response(status, error, retry_after, time.monotonic() - started)

    async def _post(self, request: Request) -> tuple[int | None, str | None, float | None]:
        url = URL(request.url)
        host = url.raw_host
        if url.scheme not in SCHEMES or not host:
            return None, "Invalid url", None
        refusal = _literal_refusal(self.policy, host)
        if refusal is not None:
            return None, refusal, None
        assert self._session is not None
        async with self._session.post(
            url, data=request.body, headers=request.headers, allow_redirects=False
        ) as answer:
            body = await self._read(answer)
            status = answer.status
            if 200 <= status < 300:
                return status, None, None
            retry_after = None
            if status in RETRY_AFTER_STATUSES:
                retry_after = retry_after_seconds(answer.headers.get("Retry-After"))
            if 300 <= status < 400:
                return status, f"HTTP {status}: redirects are not followed", retry_after
            text = _one_line(body)
            return status, f"HTTP {status}: {text}" if text else f"HTTP {status}", retry_after

    async def _read(self, answer: aiohttp.ClientResponse) -> bytes:
        """At most ``max_body_bytes`` of the body; the connection goes back to the pool only
        when the body was read to its end."""
        chunks: list[bytes] = []
        size = 0
        while size < self.max_body_bytes:
            chunk = await answer.content.read(self.max_body_bytes - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if not answer.content.at_eof():
            answer.close()
        return b"".join(chunks)

    def _describe(self, exc: Exception, url: str) -> str:
        """One stable line for a request that got no HTTP answer."""
        if isinstance(exc, asyncio.TimeoutError):
            return self._timeout_error
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            if isinstance(exc.os_error, AddressRefused | HostNotFound):
                return str(exc.os_error)
            return f"{HOST_NOT_FOUND}: {exc.host}"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return f"TLS: certificate not accepted for {exc.host}: {exc.certificate_error}"
        if isinstance(exc, aiohttp.ClientConnectorSSLError):
            return f"TLS: handshake with {exc.host}:{exc.port} failed"
        if isinstance(exc, aiohttp.ClientConnectorError):
            where = f"{exc.host}:{exc.port}"
            if isinstance(exc.os_error, ConnectionRefusedError):
                return f"ConnectionRefused: {where}"
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            return f"ConnectionError: {where}: {reason}"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "Disconnected: the receiver closed the connection without an answer"
        if isinstance(exc, aiohttp.InvalidURL | ValueError):
            return "Invalid url"
        if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
            return f"BadResponse: {_one_line(str(exc).encode())}"
        return f"{type(exc).__name__}: {_one_line(str(exc).encode())}"


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when it is installed (with ``uvicorn[standard]``): fewer microseconds a
    request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _run(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _after_fork() -> None:
    for sender in list(_senders):
        sender._forget()


os.register_at_fork(after_in_child=_after_fork)


def sender_for(settings: Settings) -> Sender:
    """A sender with the settings' policy, timeout, answer cap and concurrency."""
    return Sender(
        UrlPolicy.from_settings(settings),
        timeout=settings.webhook_timeout_seconds,
        max_body_bytes=settings.webhook_max_response_bytes,
        connections=settings.webhook_concurrency,
        # A request waiting for a connection spends its timeout: no per-host queue beneath
        # the worker's own bound (EVENTBUS_WEBHOOK_CONCURRENCY).
        per_host=settings.webhook_concurrency,
    )
