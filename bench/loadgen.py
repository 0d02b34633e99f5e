"""The load generator: an asyncio HTTP/1.1 client in a process of its own.

``python -m bench.loadgen SPEC.json OUT.json`` runs the spec's scenarios one after another and
writes a JSON list of results to OUT.json. Requests are pre-encoded bytes over raw keep-alive
streams on uvloop, so one request costs the client little CPU; the bench records this process's
CPU share next to the API's to show which side was the bottleneck.

A scenario runs either for ``duration`` seconds (after ``warmup`` seconds not counted) or for
exactly ``count`` requests; both are bounded by ``max_seconds``. With ``rate`` set it is open
loop: request *i* is due at start + i / rate whatever the answers before it, sent on the next
free connection, and its latency counts from when it was due (a request sent late because every
connection was busy counts the wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

SEQ = "{seq}"
"""Replaced in a body template by the request's sequence number, so events differ."""


@dataclass
class Scenario:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: str | None = None
    concurrency: int = 1
    duration: float | None = None
    count: int | None = None
    warmup: float = 0.0
    warmup_count: int = 0
    expect_status: int = 200
    max_seconds: float = 600.0
    timeout: float = 30.0
    rate: float | None = None
    paths: list[str] | None = None
    """When set, request *i* goes to ``paths[i % len(paths)]`` instead of ``path`` (a GET of
    many ids); bodies are not templated then."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scenario:
        return cls(**raw)


@dataclass
class _Run:
    scenario: Scenario
    head: bytes
    heads: list[bytes] = field(default_factory=list)
    measuring: bool = False
    stop: bool = False
    issued: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    first_send: float | None = None
    last_done: float | None = None
    started: float = 0.0
    """``time.perf_counter()`` when the scenario started: request *i* of a rate is due then."""


def _request_bytes(
    scenario: Scenario, host: str, port: int, seq: int, path: str | None = None
) -> bytes:
    body = b""
    if scenario.body is not None:
        text = scenario.body.replace(SEQ, str(seq)) if SEQ in scenario.body else scenario.body
        body = text.encode()
    lines = [f"{scenario.method} {path or scenario.path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in scenario.headers.items()]
    if scenario.body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Status of one response; its body is read and dropped (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        await reader.readexactly(int(lower[at + 17 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(run: _Run, host: str, port: int, deadline: float) -> None:
    scenario = run.scenario
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not run.stop and time.monotonic() < deadline:
            if scenario.count is not None and run.issued >= scenario.count + scenario.warmup_count:
                break
            seq = run.issued
            run.issued += 1
            measured = run.measuring and seq >= scenario.warmup_count
            if run.heads:
                payload = run.heads[seq % len(run.heads)]
            elif scenario.body is None or SEQ not in scenario.body:
                payload = run.head
            else:
                payload = _request_bytes(scenario, host, port, seq)
            due_ns: int | None = None
            if scenario.rate:
                due = run.started + seq / scenario.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                due_ns = int(due * 1e9)
            if measured and run.first_send is None:
                run.first_send = time.time()
            started = time.perf_counter_ns()
            if due_ns is not None:
                started = min(started, due_ns)
            writer.write(payload)
            try:
                status = await asyncio.wait_for(_read_response(reader), scenario.timeout)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                run.errors.append(f"{type(exc).__name__}: {exc}")
                break  # the connection's state is unknown: end this connection
            elapsed = time.perf_counter_ns() - started
            if measured:
                run.latencies_ns.append(elapsed)
                run.statuses[status] = run.statuses.get(status, 0) + 1
                run.last_done = time.time()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a latency some request had)."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values))))
    return float(sorted_values[rank - 1])


async def run_scenario(scenario: Scenario, host: str, port: int) -> dict[str, Any]:
    run = _Run(scenario, _request_bytes(scenario, host, port, 0))
    run.heads = [_request_bytes(scenario, host, port, 0, p) for p in scenario.paths or []]
    hard_deadline = time.monotonic() + scenario.max_seconds
    run.measuring = scenario.warmup <= 0
    run.started = time.perf_counter()
    tasks = [
        asyncio.create_task(_connection(run, host, port, hard_deadline))
        for _ in range(scenario.concurrency)
    ]
    if scenario.warmup > 0:
        await asyncio.sleep(scenario.warmup)
        run.measuring = True
    measure_start = time.monotonic()
    if scenario.duration is not None:
        await asyncio.sleep(scenario.duration)
        run.stop = True  # connections finish the request in flight and close
    results = await asyncio.gather(*tasks, return_exceptions=True)
    run.errors += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    elapsed = time.monotonic() - measure_start
    lat = sorted(run.latencies_ns)
    ok = run.statuses.get(scenario.expect_status, 0)
    wall = (
        run.last_done - run.first_send
        if run.first_send is not None and run.last_done is not None
        else elapsed
    )
    return {
        "name": scenario.name,
        "concurrency": scenario.concurrency,
        "offered_rate": scenario.rate,
        "requests": len(lat),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "errors": len(run.errors),
        "first_errors": run.errors[:5],
        "elapsed_s": round(wall, 4),
        "rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
        "latency_ms": {
            "p50": round(_percentile(lat, 0.50) / 1e6, 3),
            "p90": round(_percentile(lat, 0.90) / 1e6, 3),
            "p99": round(_percentile(lat, 0.99) / 1e6, 3),
            "max": round(lat[-1] / 1e6, 3) if lat else float("nan"),
            "mean": round(sum(lat) / len(lat) / 1e6, 3) if lat else float("nan"),
        },
        "first_send_epoch": run.first_send,
        "last_done_epoch": run.last_done,
        "timed_out": time.monotonic() >= hard_deadline,
    }


async def run_spec(spec: dict[str, Any]) -> list[dict[str, Any]]:
    host, port = spec["host"], int(spec["port"])
    return [await run_scenario(Scenario.from_dict(raw), host, port) for raw in spec["scenarios"]]


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    try:
        import uvloop

        results = uvloop.run(run_spec(spec))
    except ImportError:  # uvloop comes with uvicorn[standard]; plain asyncio still works
        results = asyncio.run(run_spec(spec))
    with open(argv[2], "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
