"""The API under sustained load on loopback: ``eventbus api`` on PostgreSQL and a Redis of the
test's own, a worker draining, a relay, and a load generator in its own process. Prints the
request rate, the error rate and each process's RSS growth (figures, not timing assertions)
and writes them to ``tests/load/last_run.json``.

``make load`` runs the 60 s version (marker ``load``, kept out of ``make test``); a 10 s smoke
of the same harness runs with the rest of the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.processes import BIN, ROOT, Proc, free_port, settings_env, wait_for
from tests.support.servers import RedisServer
from tests.support.services import make_settings
from tests.support.workers import HANDLERS, worker_answers

RESULTS = Path(__file__).with_name("last_run.json")
WARM_UP_SECONDS = 5.0


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class RssSampler:
    """Samples each named process's RSS once a second, in a thread."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic() - self.started
            pids = dict(self.processes)
            for name, pid in list(pids.items()):
                for n, child in enumerate(children(pid)):
                    if name.startswith("worker"):
                        pids[f"{name} pool {n + 1}"] = child
            for name, pid in pids.items():
                kib = rss_kib(pid)
                if kib is not None:
                    self.samples.setdefault(name, []).append((now, kib))
            self._stop.wait(1.0)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join(5)
        report = {}
        for name, samples in self.samples.items():
            warm = [kib for t, kib in samples if t >= WARM_UP_SECONDS] or [samples[-1][1]]
            report[name] = {
                "rss_start_mib": round(samples[0][1] / 1024, 1),
                "rss_after_warm_up_mib": round(warm[0] / 1024, 1),
                "rss_end_mib": round(samples[-1][1] / 1024, 1),
                "rss_max_mib": round(max(k for _, k in samples) / 1024, 1),
                "growth_after_warm_up_mib": round((samples[-1][1] - warm[0]) / 1024, 1),
            }
        return report


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def run_load(
    database_url: str, redis_server: RedisServer, seconds: float, workdir: Path
) -> dict[str, Any]:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE system_events"))
    settings = make_settings(
        database_url,
        broker_url=redis_server.url,
        handlers=HANDLERS,
        metrics_port=0,
    )
    env = settings_env(settings)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    eventbus = str(BIN / "eventbus")
    worker = ["--modules", "warehouse,notifications", "--pool", "prefork", "--concurrency", "1"]
    procs = {
        "api": Proc([eventbus, "api", "--port", str(port), "--log-level", "warning"], env),
        "worker": Proc([eventbus, "worker", *worker, "--loglevel", "WARNING"], env),
        "relay": Proc([eventbus, "relay", "--loglevel", "WARNING"], env),
    }
    out = workdir / "loadgen.json"
    try:
        wait_for(lambda: _answers(url), 30, "the API to answer")
        wait_for(lambda: worker_answers(procs["worker"], settings), 60, "the worker never answered")
        sampler = RssSampler({name: p.popen.pid for name, p in procs.items()}).start()
        loadgen = subprocess.Popen(
            [sys.executable, "-m", "tests.load.loadgen", url, str(seconds), str(out)],
            cwd=ROOT,
            env=env,
        )
        sampler.processes["loadgen"] = loadgen.pid
        loadgen.wait(seconds + 60)
        with engine.connect() as conn:
            by_status = dict(
                conn.execute(text("SELECT status, count(*) FROM system_events GROUP BY 1")).all()
            )
        rss = sampler.stop()
        figures: dict[str, Any] = json.loads(out.read_text())
        figures["events_by_status_at_end"] = by_status
        figures["rss"] = rss
        figures["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return figures
    finally:
        for proc in procs.values():
            proc.stop()
        engine.dispose()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def report(figures: dict[str, Any], name: str) -> None:
    print(f"\n{name}: {figures['requests']} requests in {figures['seconds']} s = "
          f"{figures['rps']} req/s at concurrency {figures['concurrency']}, "
          f"error rate {figures['error_rate']}, p50 {figures['p50_ms']} ms, "
          f"p99 {figures['p99_ms']} ms")  # fmt: skip
    print(f"  statuses {figures['statuses']}, transport errors {figures['transport_errors']}")
    print(f"  events at the end: {figures['events_by_status_at_end']}")
    for proc, rss in sorted(figures["rss"].items()):
        start, end = rss["rss_after_warm_up_mib"], rss["rss_end_mib"]
        growth, peak = rss["growth_after_warm_up_mib"], rss["rss_max_mib"]
        print(f"  {proc:<18} RSS {start:>7} -> {end:>7} MiB (growth {growth:+} MiB, max {peak})")


def check(figures: dict[str, Any]) -> None:
    """Errors are not a matter of speed: no 5xx, no dropped connection, every publish 201."""
    assert figures["error_rate"] == 0, figures
    assert all(k.split()[1] in ("200", "201") for k in figures["statuses"]), figures


@pytest.mark.load
def test_sixty_seconds_of_load(
    database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    figures = run_load(database_url, redis_server, 60.0, tmp_path)
    report(figures, "load, 60 s")
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs["load_60s"] = figures
    RESULTS.write_text(json.dumps(runs, indent=2, sort_keys=True) + "\n")
    check(figures)


@pytest.mark.integration
def test_ten_seconds_of_load(database_url: str, redis_server: RedisServer, tmp_path: Path) -> None:
    figures = run_load(database_url, redis_server, 10.0, tmp_path)
    report(figures, "load smoke, 10 s")
    check(figures)
