"""Hosts on one machine: a network namespace per host, all on one bridge, and the faults of a
network between them (links cut, a host cut off, one established connection gone half-open).

Every namespace, interface and rule is the suite's own: names start with ``eb<pid>-``, the bridge
lives in a namespace of its own (the machine's own network is never touched), and
:meth:`Network.destroy` removes them all (a namespace takes its interfaces and rules with it).
A cut is iptables ``DROP`` in the namespace of one end, both directions: packets vanish, no
``RST`` and no ICMP, as when a link or a switch dies, so only timeouts and keepalives notice.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SUBNET = "10.231.0"
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Network:
    """``hosts`` as namespaces ``eb<pid>-<host>`` with addresses 10.231.0.<n> on one bridge."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.prefix = f"eb{os.getpid()}"
        self.hosts = list(hosts)
        self.switch = f"{self.prefix}-sw"
        self._rules: dict[str, list[list[str]]] = {host: [] for host in self.hosts}

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def addr(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts.index(host) + 10}"

    def create(self) -> Network:
        self.destroy()  # a namespace of a run that died with this pid
        _run("ip", "netns", "add", self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for n, host in enumerate(self.hosts):
            ns = self.ns(host)
            _run("ip", "netns", "add", ns)
            port = f"p{n}"
            _run("ip", "-n", self.switch, "link", "add", port, "type", "veth",
                 "peer", "name", "eth0", "netns", ns)  # fmt: skip
            _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
        return self

    def destroy(self) -> None:
        existing = set(_run("ip", "netns", "list").split())
        for ns in [self.switch, *(self.ns(h) for h in self.hosts)]:
            if ns in existing:
                subprocess.run(["ip", "netns", "del", ns], check=False)

    # processes

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host`` (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def call_in(self, host: str, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread that entered ``host``'s network namespace (``setns`` moves
        only the calling thread): its sockets are ``host``'s."""
        result: list[T] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.enter(host)
                result.append(fn())
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def enter(self, host: str) -> None:
        """Move the calling thread into ``host``'s network namespace (for good)."""
        with open(f"/run/netns/{self.ns(host)}") as handle:
            if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.ns(host)}")

    # faults

    def _rule(self, host: str, *rule: str) -> None:
        _run("ip", "netns", "exec", self.ns(host), "iptables", "-I", *rule)
        self._rules[host].append(list(rule))

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between hosts ``a`` and ``b`` (rules in ``a``'s namespace)."""
        self._rule(a, "INPUT", "-s", self.addr(b), "-j", "DROP")
        self._rule(a, "OUTPUT", "-d", self.addr(b), "-j", "DROP")

    def isolate(self, host: str) -> None:
        """Drop every packet in and out of ``host``'s eth0 (its loopback still works)."""
        self._rule(host, "INPUT", "-i", "eth0", "-j", "DROP")
        self._rule(host, "OUTPUT", "-o", "eth0", "-j", "DROP")

    def half_open(self, host: str, local_port: int) -> None:
        """Drop the packets of ``host``'s TCP connection from ``local_port``: the connection
        stays open on both ends and nothing arrives on it any more; new ones work."""
        self._rule(host, "INPUT", "-p", "tcp", "--dport", str(local_port), "-j", "DROP")
        self._rule(host, "OUTPUT", "-p", "tcp", "--sport", str(local_port), "-j", "DROP")

    def lossy(self, host: str, probability: float) -> None:
        """Drop each packet arriving at ``host``'s eth0 with ``probability``: real losses, so
        the kernels retransmit (their timeouts grow), as on a bad link."""
        self._rule(host, "INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random",
                   "--probability", str(probability), "-j", "DROP")  # fmt: skip

    def heal(self, host: str | None = None) -> None:
        """Remove the suite's rules of ``host`` (every host's when None)."""
        for name in [host] if host else self.hosts:
            for rule in reversed(self._rules[name]):
                chain, *spec = rule
                subprocess.run(
                    ["ip", "netns", "exec", self.ns(name), "iptables", "-D", chain, *spec],
                    check=False,
                    capture_output=True,
                )
            self._rules[name].clear()

    def connections(self, host: str, peer: str, port: int) -> list[tuple[int, int]]:
        """``host``'s established TCP connections to ``peer``:``port``: (local port, pid)."""
        out = _run("ip", "netns", "exec", self.ns(host), "ss", "-Htnp", "state", "established",
                   "dst", f"{self.addr(peer)}:{port}")  # fmt: skip
        found = []
        for line in out.splitlines():
            fields = line.split()
            local = fields[2] if len(fields) > 2 else ""
            pid = 0
            if "pid=" in line:
                pid = int(line.split("pid=", 1)[1].split(",", 1)[0])
            if ":" in local:
                found.append((int(local.rsplit(":", 1)[1]), pid))
        return found


@contextlib.contextmanager
def network(hosts: Sequence[str]) -> Iterator[Network]:
    net = Network(hosts).create()
    try:
        yield net
    finally:
        net.destroy()
