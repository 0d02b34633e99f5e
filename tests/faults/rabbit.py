"""A RabbitMQ server on its own host (namespace), with everything of it in a directory of its
own: its node database, logs, configuration and Erlang cookie (``HOME``). Its epmd is started
by the suite in the same namespace, on that namespace's loopback, so the node's name
(``rabbit@localhost``) and its distribution port never meet the machine's own RabbitMQ."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import amqp
from kombu import Connection

from bus.settings import Settings
from tests.faults.harness import NetStack
from tests.faults.hosts import HostPostgres
from tests.faults.network import Network
from tests.support.processes import wait_for

AMQP_PORT = 5672
DIST_PORT = 25672
NODE = "rabbit@localhost"
_SBIN = Path("/usr/lib/rabbitmq/bin")
"""The scripts that run the node as the calling user (``/usr/sbin``'s wrappers switch to the
``rabbitmq`` user, whose HOME and cookie are the machine's RabbitMQ's)."""


def _script(name: str) -> str:
    found = _SBIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


class HostRabbit:
    """``rabbitmq-server`` on ``host``, listening on the host's address; :meth:`kill` and
    :meth:`start` again keep its node database (durable queues, and the persistent messages
    it had confirmed: an unconfirmed one may be gone)."""

    def __init__(self, net: Network, host: str = "rabbit") -> None:
        self.net, self.host = net, host
        self.dir = Path(tempfile.mkdtemp(prefix="eventbus-rabbit-"))
        (self.dir / "log").mkdir()
        (self.dir / "mnesia").mkdir()
        (self.dir / "rabbitmq-env.conf").write_text("")  # never /etc/rabbitmq's
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            "loopback_users = none\n"  # guest over the bridge
            f"listeners.tcp.default = {net.addr(host)}:{AMQP_PORT}\n"
            "disk_free_limit.absolute = 50MB\n"  # the machine's disk is shared: no alarm
            "log.console = false\n"
            "log.file.level = info\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.net.addr(self.host)}:{AMQP_PORT}//"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.dir),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=NODE,
            RABBITMQ_NODE_IP_ADDRESS=self.net.addr(self.host),
            RABBITMQ_NODE_PORT=str(AMQP_PORT),
            RABBITMQ_DIST_PORT=str(DIST_PORT),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
            # distribution on the namespace's loopback only: nothing of it crosses the bridge
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self) -> HostRabbit:
        if self.epmd is None or self.epmd.poll() is not None:
            # epmd of the suite's own (in the foreground, so its pid is known): the node
            # finds it running and starts none, which would outlive a killed node
            self.epmd = subprocess.Popen(
                self.net.argv(self.host, ["epmd", "-address", "127.0.0.1"]),
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        with (self.dir / "server.out").open("ab") as out:
            # a session of its own: kill() ends the script and beam.smp with one killpg; the
            # node's helpers (erl_child_setup, inet_gethost: sessions of their own) exit with it
            self.proc = subprocess.Popen(
                self.net.argv(self.host, [_script("rabbitmq-server")]),
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(self._answers, 90, f"RabbitMQ on {self.host} never answered", 0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self._tail()}") from None
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited ({self.proc.returncode}){self._tail()}")
        return self.net.call_in(self.host, self._connects)

    def _connects(self) -> bool:
        conn = amqp.Connection(
            f"{self.net.addr(self.host)}:{AMQP_PORT}", connect_timeout=1, read_timeout=2
        )
        try:
            conn.connect()
        except Exception:
            conn.collect()  # what a refused or half-made connection left
            return False
        conn.close()
        return True

    def _tail(self) -> str:
        out = self.dir / "server.out"
        return f":\n{out.read_text(errors='replace')[-2000:]}" if out.exists() else ""

    def kill(self) -> None:
        """SIGKILL the node and its helpers (its epmd lives on, as a host's would)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        wait_for(lambda: not self.net.call_in(self.host, self._connects), 10, "RabbitMQ never went")

    def stop(self) -> None:
        """Everything gone: the node, its epmd, its directory."""
        for proc in (self.proc, self.epmd):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitNetStack(NetStack):
    """The network suite's bus on ``rabbit``'s RabbitMQ. The stack's Redis still starts, and
    nothing of the bus uses it; the suite reaches RabbitMQ from the client host (the bridge
    is not in the suite's own namespace)."""

    def __init__(
        self, net: Network, pg: HostPostgres, database: str, rabbit: HostRabbit, **overrides: Any
    ) -> None:
        self.rabbit = rabbit
        super().__init__(net, pg, database, broker_url=rabbit.url, **overrides)

    def _local(self, settings: Settings) -> Settings:
        local = super()._local(settings)
        return local.model_copy(update={"broker_url": settings.broker_url})

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        def read() -> dict[str, int]:
            with Connection(self.settings.broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
                channel = conn.default_channel
                # every served queue is declared: each worker consumes them all
                return {
                    q: int(channel.queue_declare(q, passive=True).message_count) for q in queues
                }

        return self.net.call_in("client", read)

    def kill_rabbit(self) -> None:
        self.fault()
        self.rabbit.kill()


__all__ = ["AMQP_PORT", "HostRabbit", "RabbitNetStack"]
