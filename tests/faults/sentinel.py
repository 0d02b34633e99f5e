"""Redis behind Sentinel on the suite's hosts: the primary on ``redis``, a replica of it on
``redis2``, three sentinels on ``sentinel`` (ports 26379-26381, quorum 2), and a
:class:`~tests.faults.harness.NetStack` whose processes reach the broker only through them
(``sentinel://`` URL, EVENTBUS_BROKER_SENTINEL_MASTER).

The suite's own reads of Redis (the queues' lengths once every event is final) go to whichever
server the sentinels report as the master then, through its UNIX socket."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.faults.harness import NetStack
from tests.faults.hosts import REDIS_PORT, HostPostgres, HostRedis
from tests.faults.network import Network
from tests.support.processes import wait_for
from tests.support.sentinel import sentinel_conf

MASTER = "eventbus"
SENTINEL_PORTS = (26379, 26380, 26381)
DOWN_AFTER_MS = 3000
"""A master that answers no sentinel's PING for this long is down (then the quorum agrees)."""
FAILOVER_TIMEOUT_MS = 5000
"""A failover that stalls is tried again after this (by another sentinel)."""


def sentinel_url(net: Network, host: str) -> str:
    """The broker URL of the sentinels on ``host``."""
    addr = net.addr(host)
    return ";".join(f"sentinel://{addr}:{port}" for port in SENTINEL_PORTS)


class HostReplica(HostRedis):
    """A redis-server on ``host`` replicating ``primary`` over the bridge."""

    def __init__(self, net: Network, host: str, primary: HostRedis) -> None:
        super().__init__(net, host)
        self.primary = primary

    def args(self) -> list[str]:
        return [*super().args(), "--replicaof", self.net.addr(self.primary.host), str(REDIS_PORT)]


class HostSentinels:
    """``redis-sentinel`` processes on ``host``, one per port, watching ``primary``."""

    def __init__(self, net: Network, host: str, primary: HostRedis) -> None:
        self.net, self.host, self.primary = net, host, primary
        self.dir = Path(tempfile.mkdtemp(prefix="eventbus-sentinel-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> HostSentinels:
        for port in SENTINEL_PORTS:
            home = self.dir / str(port)
            home.mkdir()
            conf = sentinel_conf(
                home,
                bind=self.net.addr(self.host),
                port=port,
                master_host=self.net.addr(self.primary.host),
                master_port=REDIS_PORT,
                master=MASTER,
                down_after_ms=DOWN_AFTER_MS,
                failover_timeout_ms=FAILOVER_TIMEOUT_MS,
            )
            log = (home / "sentinel.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    self.net.argv(self.host, ["redis-sentinel", str(conf)]),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        wait_for(self._watching, 30, "the sentinels to see the replica and each other", 0.2)
        return self

    def ask(self, port: int, *command: str) -> Any:
        """A sentinel's answer to ``command``, asked from inside its host."""

        def call() -> Any:
            client = redis.Redis(
                self.net.addr(self.host), port, socket_timeout=1, decode_responses=True
            )
            try:
                return client.execute_command(*command)
            finally:
                client.close()

        return self.net.call_in(self.host, call)

    def _watching(self) -> bool:
        """Every sentinel knows the replica and the two others: a failover can run."""
        for port in SENTINEL_PORTS:
            try:
                state = self.ask(port, "SENTINEL", "MASTER", MASTER)
            except redis.RedisError:
                return False
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def master_addr(self) -> str | None:
        """The master's address as the first sentinel that answers reports it."""
        for port in SENTINEL_PORTS:
            try:
                found = self.ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            except redis.RedisError:
                continue
            if found:
                return str(found[0])
        return None

    def log(self) -> str:
        return "\n".join(
            f"--- sentinel {port}\n{(self.dir / str(port) / 'sentinel.log').read_text()[-1500:]}"
            for port in SENTINEL_PORTS
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelStack(NetStack):
    """A :class:`NetStack` whose broker is Redis on ``redis`` with a replica on ``redis2`` and
    three sentinels on ``sentinel``; every process reaches it through the sentinels."""

    replica: HostReplica
    sentinels: HostSentinels

    def __init__(self, net: Network, pg: HostPostgres, database: str, **overrides: Any) -> None:
        overrides.setdefault("broker_url", sentinel_url(net, "sentinel"))
        overrides.setdefault("broker_sentinel_master", MASTER)
        super().__init__(net, pg, database, **overrides)

    def _start_redis(self, persistent: bool) -> HostRedis:
        primary = super()._start_redis(persistent)
        try:
            self.replica = HostReplica(self.net, "redis2", primary).start()
            self.sentinels = HostSentinels(self.net, "sentinel", primary).start()
        except BaseException:
            primary.stop()
            if hasattr(self, "replica"):
                self.replica.stop()
            raise
        return primary

    @property
    def servers(self) -> list[HostRedis]:
        return [self.redis, self.replica]

    def master(self) -> HostRedis:
        """The server the sentinels report as the master now."""
        addr = self.sentinels.master_addr()
        for server in self.servers:
            if self.net.addr(server.host) == addr:
                return server
        raise AssertionError(f"the sentinels report {addr}, no server of the stack")

    def wait_promoted(self, since: float, timeout: float = 60) -> float:
        """Seconds from ``since`` (epoch) until the sentinels report the replica as master."""
        replica = self.net.addr(self.replica.host)
        try:
            wait_for(lambda: self.sentinels.master_addr() == replica, timeout, "a failover")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.sentinels.log()}") from None
        return round(time.time() - since, 1)

    def settle(self, at_least: int, timeout: float = 120) -> None:
        # The queues are read on the master of now (after a failover, the promoted replica).
        local = self.runtime.settings.model_copy(update={"broker_url": self.master().local_url})
        self.runtime.settings = local
        super().settle(at_least, timeout)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.sentinels.stop()
            self.replica.stop()
