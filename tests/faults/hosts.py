"""The suite's servers, each inside its host's namespace: the processes reach them over the
bridge (TCP to the host's address), the suite itself through their UNIX sockets, which no
network fault touches (a socket file is not in any network namespace)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.faults.network import SUBNET, Network
from tests.support.processes import wait_for
from tests.support.servers import PostgresCluster, RedisServer, _as_postgres

REDIS_PORT = 6379
PG_PORT = 5432


class HostRedis(RedisServer):
    """A redis-server bound to its host's address (and a UNIX socket for the suite)."""

    def __init__(self, net: Network, host: str, *, persistent: bool = False) -> None:
        super().__init__(persistent=persistent)
        self.net, self.host = net, host
        self.port = REDIS_PORT

    @property
    def url(self) -> str:
        return f"redis://{self.net.addr(self.host)}:{REDIS_PORT}/0"

    @property
    def socket(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def local_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def args(self) -> list[str]:
        return [
            "redis-server",
            "--bind", self.net.addr(self.host),
            "--port", str(REDIS_PORT),
            "--unixsocket", str(self.socket),
            "--protected-mode", "no",  # reached over its namespace's bridge only
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip

    def start(self) -> HostRedis:
        self.proc = subprocess.Popen(
            self.net.argv(self.host, self.args()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, f"redis on {self.host} never answered")
        return self

    def _answers(self) -> bool:
        done = subprocess.run(
            ["redis-cli", "-s", str(self.socket), "ping"], capture_output=True, check=False
        )
        return done.returncode == 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        wait_for(lambda: not self._answers(), 10, "redis never went away")


class HostPostgres(PostgresCluster):
    """A PostgreSQL cluster listening on its host's address (and a socket for the suite)."""

    def __init__(self, net: Network, host: str) -> None:
        super().__init__()
        self.net, self.host = net, host
        self.port = PG_PORT

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.dir}&port={PG_PORT}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{self.net.addr(self.host)}:{PG_PORT}/{database}"

    def local_url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.dir}&port={PG_PORT}"

    def init(self) -> HostPostgres:
        super().init()
        # initdb trusts the loopback only: the bus's hosts reach it over the bridge.
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        return self

    def start(self) -> HostPostgres:
        args = _as_postgres(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(PG_PORT),
             "-c", f"listen_addresses={self.net.addr(self.host)}",
             "-c", f"unix_socket_directories={self.dir}",
             "-c", "max_connections=300", "-c", "fsync=on"]
        )  # fmt: skip
        self.proc = subprocess.Popen(
            self.net.argv(self.host, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._ready, 30, f"postgres on {self.host} never answered", interval=0.1)
        return self

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", str(self.dir), "-p", str(PG_PORT)],
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def _listening(self) -> bool:
        # never a probe of 127.0.0.1:5432 from here: that is the machine's own PostgreSQL
        return self._ready()


__all__ = ["PG_PORT", "REDIS_PORT", "HostPostgres", "HostRedis"]
