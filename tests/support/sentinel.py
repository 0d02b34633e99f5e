"""Redis Sentinel of a test's own on loopback: a primary, a replica of it and three sentinels
(quorum 2) on free ports, each in a directory of its own; and the config every sentinel of the
suites starts from (tests/faults/sentinel.py puts the same on hosts)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.processes import free_port, port_open, wait_for
from tests.support.servers import RedisServer

MASTER = "eventbus-test"
QUORUM = 2
DOWN_AFTER_MS = 2000
"""How long a master may not answer before a sentinel deems it down (then the quorum agrees)."""
FAILOVER_TIMEOUT_MS = 5000
"""A failover that stalls is tried again after this (by another sentinel)."""


def sentinel_conf(
    directory: Path,
    *,
    bind: str,
    port: int,
    master_host: str,
    master_port: int,
    master: str = MASTER,
    down_after_ms: int = DOWN_AFTER_MS,
    failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
) -> Path:
    """A sentinel's config file in ``directory`` (sentinels rewrite theirs: a file of its own)."""
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"bind {bind}\n"
        f"port {port}\n"
        f"dir {directory}\n"
        "protected-mode no\n"
        f"sentinel monitor {master} {master_host} {master_port} {QUORUM}\n"
        f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
        f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
        f"sentinel parallel-syncs {master} 1\n"
    )
    return conf


class ReplicaServer(RedisServer):
    """A redis-server replicating ``primary`` (loopback)."""

    def __init__(self, primary: RedisServer) -> None:
        super().__init__()
        self.primary = primary

    def args(self) -> list[str]:
        return [*super().args(), "--replicaof", "127.0.0.1", str(self.primary.port)]


class SentinelServer:
    """One ``redis-sentinel`` on a free loopback port, watching ``primary``."""

    def __init__(self, primary: RedisServer) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventbus-sentinel-"))
        conf = sentinel_conf(
            self.dir, bind="127.0.0.1", port=self.port, master_host="127.0.0.1",
            master_port=primary.port,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            ["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open(self.port), 10, f"sentinel on {self.port} never answered")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelCluster:
    """A primary, its replica and three sentinels, all on loopback."""

    def __init__(self) -> None:
        self.primary = RedisServer().start()
        self.replica = ReplicaServer(self.primary).start()
        self.sentinels: list[SentinelServer] = []
        try:
            self.sentinels = [SentinelServer(self.primary) for _ in range(3)]
            wait_for(self._watched, 30, "the sentinels to see the replica and each other")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1)
            try:
                _host, port = client.sentinel_get_master_addr_by_name(MASTER)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
            finally:
                client.close()
        return None

    def _watched(self) -> bool:
        """Every sentinel knows the replica and the two other sentinels: a failover can run."""
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1, decode_responses=True)
            try:
                state = client.sentinel_master(MASTER)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def fail_over(self, timeout: float = 30) -> float:
        """SIGKILL the primary; returns the seconds until the sentinels report the replica."""
        killed = time.monotonic()
        self.primary.kill()
        wait_for(lambda: self.master_port() == self.replica.port, timeout, "the replica promoted")
        return time.monotonic() - killed

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.primary.stop()
