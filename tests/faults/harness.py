"""The bus spread over hosts (network namespaces on one bridge): 2 API hosts, 3 worker hosts, a
relay host, Redis and PostgreSQL on hosts of their own, and a client host that publishes
through the API hosts as a shop's modules would, retrying with the same ``Idempotency-Key``.

It is the chaos suite's :class:`~tests.chaos.harness.Stack` (its ledger, its count) with every
process placed on a host; the suite reads the database and Redis through their UNIX sockets,
which no network fault touches.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bus.settings import Settings
from tests.chaos.harness import TENANTS, Planned, Stack, in_thread, token_for
from tests.faults.hosts import HostPostgres, HostRedis
from tests.faults.network import Network
from tests.faults.proxy import write_control
from tests.support.processes import BIN, Proc, wait_for

API_PORT = 8000
REQUEST_TIMEOUT = 30.0
"""The client's read timeout: an API that holds a request past it hangs (a finding)."""
HOSTS = (
    "client", "api1", "api2", "worker1", "worker2", "worker3", "relay", "redis", "pg",
    "redis2", "sentinel", "rabbit",
)  # fmt: skip
"""The hosts; a host's address follows its place here (10.231.0.10 on): add new ones last."""
PLACES = {"w1": "worker1", "w2": "worker2", "w3": "worker3", "relay": "relay"}
PROXIED = {"pg": 5432, "redis": 6379, "api1": API_PORT, "api2": API_PORT}
"""With ``proxied``: the links into these hosts' ports go through a proxy on the host, on the
port 10000 above (tests/faults/proxy.py), which can make them slow."""

# Network settings the suite runs with: the defaults, unless a scenario says otherwise.
NET_SETTINGS: dict[str, Any] = {}


class NetStack(Stack):
    """A chaos stack whose processes run on hosts of ``net``."""

    def __init__(
        self,
        net: Network,
        pg: HostPostgres,
        database: str,
        *,
        proxied: bool = False,
        **overrides: Any,
    ) -> None:
        self.net = net
        self.database = database
        self.skews: dict[str, str] = {}
        """A process's clock offset for faketime (``"+30s"``), by process name."""
        self.proxied = proxied
        self.unkeyed_every = 0
        """With n > 0, every n-th publish goes without an ``Idempotency-Key``: the API's group
        commit takes it (a keyed publish has a transaction of its own), and a retry after an
        answer that never came may store it twice (at least once, as documented)."""
        if proxied:
            overrides.setdefault("database_url", pg.url(database).replace(":5432/", ":15432/"))
            overrides.setdefault("broker_url", f"redis://{net.addr('redis')}:16379/0")
        super().__init__(pg, database, **{**NET_SETTINGS, **overrides})
        self.apis: list[str] = []
        self.controls: list[Path] = []
        if proxied:
            self._start_proxies()

    def _start_proxies(self) -> None:
        """A proxy on each host of :data:`PROXIED`, passing its links through unchanged until
        :meth:`slow`."""
        for host, port in PROXIED.items():
            control = self.redis.dir / f"proxy-{host}.json"
            write_control(control, None)
            self.controls.append(control)
            addr = self.net.addr(host)
            link = f"{addr}:{port + 10000}={addr}:{port}"
            argv = [str(BIN / "python"), "-m", "tests.faults.proxy", str(control), link]
            proc = Proc(self.net.argv(host, argv), self.env())
            self.procs[f"proxy-{host}"] = proc
            self.every_proc.append(proc)
            proc.wait_for_line("proxy ready", 30)

    def trap_commit(self, host: str, *, deliver: bool) -> Callable[[float], None]:
        """The next COMMIT of a batch's outcomes from ``host`` to PostgreSQL silenced on its
        connection (``deliver``: the server commits it, its answer is lost); the returned
        function waits up to its argument in seconds for it to happen."""
        control = self.redis.dir / "proxy-pg.json"
        trapped = control.with_name(control.name + ".trapped")
        trapped.unlink(missing_ok=True)
        # A batch's outcomes are over 1,000 bytes sent; a claim, a poll, a beat under 700 (their
        # SQL text is sent once: psycopg prepares a statement run five times)
        trap = {"client": self.net.addr(host), "min_bytes": 1000, "deliver": deliver}
        write_control(control, None, trap=trap)

        def wait(timeout: float) -> None:
            try:
                wait_for(trapped.exists, timeout, f"a COMMIT of {host}'s batch")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {self.procs['proxy-pg'].lines[-20:]}") from None

        return wait

    def slow(self, delay: tuple[float, float] | None, loss: float = 0.0) -> None:
        """Every proxied link held ``delay`` (low, high seconds, drawn per chunk and per
        direction), and ``loss`` of the packets arriving at every host dropped; ``None``
        ends the delay (:meth:`Network.heal` the loss)."""
        for control in self.controls:
            write_control(control, delay)
        if loss:
            for host in ("client", "api1", "api2", "worker1", "worker2", "worker3", "relay",
                         "redis", "pg"):  # fmt: skip
                self.net.lossy(host, loss)

    def _start_redis(self, persistent: bool) -> HostRedis:
        return HostRedis(self.net, "redis", persistent=persistent).start()

    def _local(self, settings: Settings) -> Settings:
        assert isinstance(self.pg, HostPostgres) and isinstance(self.redis, HostRedis)
        return settings.model_copy(
            update={
                "database_url": self.pg.local_url(self.database),
                "broker_url": self.redis.local_url,
            }
        )

    def _argv(self, name: str, argv: list[str]) -> list[str]:
        skew = self.skews.get(name)
        if skew:
            # libfaketime moves this process's wall clock only (FAKETIME_DONT_FAKE_MONOTONIC
            # in env()): what a host whose NTP drifted sees
            argv = ["faketime", "-f", skew, *argv]
        return self.net.argv(PLACES.get(name, name), argv)

    def pid_of(self, name: str) -> int:
        """The pid of process ``name`` itself (faketime runs its command as a child)."""
        pid = self.procs[name].popen.pid
        if name not in self.skews:
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0])

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(FAKETIME_DONT_FAKE_MONOTONIC="1", **extra)

    def start_api(self, name: str = "api1", argv: Sequence[str] | None = None, **env: str) -> Proc:
        """An API on host ``name`` (api1 or api2), on port 8000 of its address."""
        command = list(argv or [str(BIN / "eventbus"), "api"])
        command += ["--host", "0.0.0.0", "--port", str(API_PORT), "--log-level", "warning"]
        proc = Proc(self.net.argv(name, command), self.env(**env))
        self.procs[name] = proc
        self.every_proc.append(proc)
        url = self.url_of(name)
        wait_for(lambda: self._answers(proc, url), 30, f"the API on {name} to answer")
        self.apis.append(name)
        return proc

    def url_of(self, api: str) -> str:
        port = API_PORT + 10000 if self.proxied else API_PORT
        return f"http://{self.net.addr(api)}:{port}"

    def _answers(self, proc: Proc, url: str) -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"the API exited:\n{proc.output[-3000:]}")

        def get() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        return self.net.call_in("client", get)

    @property
    def api_url(self) -> str:
        return self.url_of(self.apis[0])

    def publish_steady(
        self, planned: Sequence[Planned], rate: float = 100.0, give_up_after: float = 120.0
    ) -> Callable[[], Publishing]:
        """Publish from the client host at ``rate`` a second, round robin over the API hosts,
        each event with an ``Idempotency-Key`` of its own (see :attr:`unkeyed_every`), retried
        (same key, the next API) on no answer, a 5xx or a 409 until ``give_up_after`` seconds;
        the returned function waits and gives what happened."""
        outcome = Publishing()
        urls = [self.url_of(api) for api in self.apis]

        def run() -> None:
            self.net.enter("client")
            asyncio.run(_publish_steady(urls, planned, rate, give_up_after, outcome, self))

        thread = in_thread(run)
        self.threads.append(thread)

        def result() -> Publishing:
            thread.join(give_up_after + len(planned) / rate + 60)
            assert not thread.is_alive(), "publishing did not finish"
            return outcome

        return result


@dataclass
class Publishing:
    """What the client host saw."""

    answered: list[uuid.UUID] = field(default_factory=list)
    gave_up: int = 0
    """Publishes never answered 201 within the time the client allows (it would report them)."""
    retried: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    """Every answer other than 201, and every transport error, by kind."""
    replayed: int = 0
    """201s that were a retry's answer to a publish already stored (``idempotent-replayed``)."""
    slowest: float = 0.0
    """The longest single request (seconds): the API must answer, not hang past its timeout."""
    requests: list[tuple[float, float, str, str]] = field(default_factory=list)
    """Every request: (start, seconds, answer or error, API url), start in epoch seconds."""

    def took(self, started: float, answer: str, url: str) -> None:
        """A request to ``url`` begun at ``started`` (monotonic) ended with ``answer``."""
        took = time.monotonic() - started
        self.slowest = max(self.slowest, took)
        self.requests.append((time.time() - took, took, answer, url))

    def check_served(self, *, timeouts: bool = True) -> None:
        """No publish given up, none answered 500, and (``timeouts``) none held past the
        client's read timeout: the API answered, a 503 at worst, which the client retried."""
        answers = dict(self.answers)
        assert self.gave_up == 0, answers
        assert "500" not in answers, answers
        if timeouts:
            assert answers.get("ReadTimeout", 0) == 0, answers

    def first_end(self, url: str, since: float, ok: bool) -> float | None:
        """Seconds from ``since`` (epoch) to the end of the first request to ``url`` begun
        after it that was answered 201 (``ok``) or not; None if none was."""
        ends = [
            at + took
            for at, took, answer, to in self.requests
            if to == url and at >= since and (answer == "201") == ok
        ]
        return round(min(ends) - since, 1) if ends else None


def _key_of(n: int, unkeyed_every: int) -> dict[str, str]:
    """Publish ``n``'s ``Idempotency-Key`` header (none for every ``unkeyed_every``-th)."""
    if unkeyed_every and n % unkeyed_every == 0:
        return {}
    return {"Idempotency-Key": str(uuid.uuid4())}


async def _publish_steady(
    urls: list[str],
    planned: Sequence[Planned],
    rate: float,
    give_up_after: float,
    outcome: Publishing,
    stack: NetStack,
) -> None:
    tokens = {t: f"Bearer {token_for(t)}" for t in TENANTS}
    # A pool per API host, as a client with a load balancer's targets would keep: connections
    # hung on one host never starve the other's. At most 96 publishes in flight.
    limits = httpx.Limits(max_connections=48, max_keepalive_connections=16)
    timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=3.0, pool=5.0)
    clients = {url: httpx.AsyncClient(limits=limits, timeout=timeout) for url in urls}
    lanes = asyncio.Semaphore(96)
    try:

        async def one(n: int, item: Planned) -> None:
            headers = {"Authorization": tokens[item.tenant], **_key_of(n, stack.unkeyed_every)}
            deadline = time.monotonic() + give_up_after
            attempt = 0
            async with lanes:
                while not stack.stopping.is_set():
                    url = urls[(n + attempt) % len(urls)]
                    started = time.monotonic()
                    answer = "?"
                    try:
                        response = await clients[url].post(
                            f"{url}/system/events", json=item.body, headers=headers
                        )
                    except httpx.TransportError as exc:
                        answer = type(exc).__name__
                        outcome.answers[answer] += 1
                    else:
                        answer = str(response.status_code)
                        if response.status_code == 201:
                            outcome.answered.append(uuid.UUID(response.json()["event"]["id"]))
                            if response.headers.get("idempotent-replayed") == "true":
                                outcome.replayed += 1
                            return
                        outcome.answers[str(response.status_code)] += 1
                        if response.status_code < 500 and response.status_code != 409:
                            raise AssertionError(f"{response.status_code}: {response.text}")
                    finally:
                        outcome.took(started, answer, url)
                    attempt += 1
                    outcome.retried += 1
                    if time.monotonic() > deadline:
                        outcome.gave_up += 1
                        return
                    await asyncio.sleep(min(0.2 * attempt, 2.0))

        tasks = []
        start = time.monotonic()
        for n, item in enumerate(planned):
            if stack.stopping.is_set():
                break
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n, item)))
        await asyncio.gather(*tasks)
    finally:
        for client in clients.values():
            await client.aclose()
