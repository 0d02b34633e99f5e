"""Throwaway redis-server and PostgreSQL instances on free loopback ports.

Tests kill and restart these, never the machine's shared services.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.processes import free_port, port_open, wait_for

PG_BIN = Path(os.environ.get("EVENTBUS_PG_BIN", "")) if os.environ.get("EVENTBUS_PG_BIN") else None


class RedisServer:
    """A redis-server of the test's own; ``persistent`` turns on AOF (appendfsync always)."""

    def __init__(self, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventbus-redis-"))
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        """redis-server's command line (a replica adds to it)."""
        args = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        if self.persistent:
            return [*args, "--appendonly", "yes", "--appendfsync", "always"]
        return [*args, "--appendonly", "no"]

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open(self.port), 10, f"redis on {self.port} never answered")
        return self

    def kill(self) -> None:
        """SIGKILL: whatever was not persisted is gone."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        wait_for(lambda: not port_open(self.port), 10, "redis never went away")

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin() -> Path:
    if PG_BIN:
        return PG_BIN
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return found[-1].parent


def _as_postgres(args: list[str]) -> list[str]:
    """Run a server binary as the postgres user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class PostgresCluster:
    """A throwaway PostgreSQL cluster, initialised in a temporary directory, trust auth."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventbus-pg-"))
        self.data = self.dir / "data"
        self.bin = _pg_bin()
        self.proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> PostgresCluster:
        subprocess.run(
            _as_postgres(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "--no-sync", "-E", "UTF8"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    def start(self) -> PostgresCluster:
        self.proc = subprocess.Popen(
            _as_postgres(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                 "-c", "max_connections=200", "-c", "fsync=on"]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self._ready, 30, f"postgres on {self.port} never answered", interval=0.1)
        return self

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def kill(self) -> None:
        """SIGKILL the postmaster (crash recovery runs on the next start)."""
        if self.proc and self.proc.poll() is None:
            # runuser forwards nothing on SIGKILL; kill the postmaster it started.
            pid = self._postmaster_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
            self.proc.wait(30)
        wait_for(lambda: not self._listening(), 30, "postgres never went away")
        # Orphaned backends exit once the postmaster is gone; wait for the shared memory to free.
        wait_for(lambda: not (self.data / "postmaster.pid").exists() or self._stale_pid(),
                 30, "postmaster.pid never cleared")  # fmt: skip

    def _listening(self) -> bool:
        return port_open(self.port)

    def _postmaster_pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _stale_pid(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            pid = self._postmaster_pid()
            if pid:
                os.kill(pid, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
