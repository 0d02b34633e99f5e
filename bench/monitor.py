"""Peak RSS and CPU time of the processes under test, sampled from a background thread.

RSS of a group is the sum over a root process and all its children at one instant (so a prefork
pool's shared pages count once per child, as ``ps`` would show them). CPU is read per PID and
kept after a process exits, so a phase's CPU share includes processes that stopped during it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

MIB = 1024 * 1024
REFIND_EVERY = 10


@dataclass
class _Phase:
    name: str
    started: float
    cpu_start: dict[int, float]
    machine_busy_start: float
    peak_rss: dict[str, int] = field(default_factory=dict)


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all users, all processes)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class Monitor:
    """Samples registered process trees every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        self._interval = interval
        self._roots: dict[int, tuple[str, psutil.Process]] = {}
        self._extra: dict[str, list[psutil.Process]] = {}
        self._finders: dict[str, Callable[[], list[psutil.Process]]] = {}
        self._ticks = 0
        self._cpu: dict[int, tuple[str, float]] = {}
        self._peak_rss: dict[str, int] = {}
        self._peak_proc_rss: dict[str, int] = {}
        self._phase: _Phase | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self.phases: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def watch(self, group: str, pid: int) -> None:
        """Count ``pid`` and its children (now and later) in ``group``."""
        with self._lock, contextlib.suppress(psutil.Error):
            self._roots[pid] = (group, psutil.Process(pid))

    def watch_found(self, group: str, find: Callable[[], list[psutil.Process]]) -> None:
        """Processes not started here but serving this run (PostgreSQL backends of its DB).

        ``find`` is called again every ``REFIND_EVERY`` samples: backends come and go with
        connection pools. They are only read, never signalled.
        """
        with self._lock:
            self._finders[group] = find
        self._refind()

    def _refind(self) -> None:
        for group, find in list(self._finders.items()):
            with contextlib.suppress(Exception):
                found = find()
                with self._lock:
                    self._extra[group] = found

    def unwatch(self, pid: int) -> None:
        """Stop sampling a root before it is stopped (its CPU so far stays counted)."""
        self.sample()
        with self._lock:
            self._roots.pop(pid, None)

    def _members(self) -> list[tuple[str, psutil.Process]]:
        members: list[tuple[str, psutil.Process]] = []
        for group, root in list(self._roots.values()):
            members.append((group, root))
            with contextlib.suppress(psutil.Error):
                members.extend((group, child) for child in root.children(recursive=True))
        for group, procs in list(self._extra.items()):
            members.extend((group, p) for p in procs)
        return members

    def sample(self) -> None:
        """One reading of every watched process (also called at phase edges for exactness)."""
        with self._lock:
            rss: dict[str, int] = {}
            for group, proc in self._members():
                try:
                    with proc.oneshot():
                        mem = proc.memory_info().rss
                        cpu = proc.cpu_times()
                except psutil.Error:
                    continue
                rss[group] = rss.get(group, 0) + mem
                self._peak_proc_rss[group] = max(self._peak_proc_rss.get(group, 0), mem)
                self._cpu[proc.pid] = (group, cpu.user + cpu.system)
            for group, total in rss.items():
                self._peak_rss[group] = max(self._peak_rss.get(group, 0), total)
                if self._phase is not None:
                    peaks = self._phase.peak_rss
                    peaks[group] = max(peaks.get(group, 0), total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._ticks += 1
            if self._ticks % REFIND_EVERY == 0:
                self._refind()
            with contextlib.suppress(Exception):
                self.sample()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        """CPU cores used per group and peak RSS per group while the block runs.

        The yielded dict is filled in when the block ends; it is also kept in ``phases``.
        """
        self._refind()
        self.sample()
        with self._lock:
            self._phase = _Phase(
                name,
                time.monotonic(),
                {pid: cpu for pid, (_, cpu) in self._cpu.items()},
                _machine_busy_seconds(),
            )
        result: dict[str, Any] = {}
        try:
            yield result
        finally:
            self._refind()
            self.sample()
            with self._lock:
                phase = self._phase
                self._phase = None
            assert phase is not None
            elapsed = max(time.monotonic() - phase.started, 1e-9)
            used: dict[str, float] = {}
            for pid, (group, cpu) in self._cpu.items():
                delta = cpu - phase.cpu_start.get(pid, 0.0)
                if delta > 0:
                    used[group] = used.get(group, 0.0) + delta
            busy = _machine_busy_seconds() - phase.machine_busy_start
            result.update(
                elapsed_s=round(elapsed, 3),
                cpu_cores={g: round(s / elapsed, 2) for g, s in sorted(used.items())},
                machine_busy_cores=round(busy / elapsed, 2),
                # Whatever else ran: PostgreSQL's background processes and other users' work.
                other_cores=round(max(0.0, busy - sum(used.values())) / elapsed, 2),
                peak_rss_mib={g: round(b / MIB, 1) for g, b in sorted(phase.peak_rss.items())},
            )
            self.phases[name] = result

    def peaks(self) -> dict[str, dict[str, float]]:
        """Peak RSS over the whole run: of each group's tree and of its largest process."""
        with self._lock:
            return {
                group: {
                    "tree_mib": round(total / MIB, 1),
                    "largest_process_mib": round(self._peak_proc_rss.get(group, 0) / MIB, 1),
                }
                for group, total in sorted(self._peak_rss.items())
            }
