"""``--profile``: where the API's and a worker's CPU goes, with py-spy, outside the timed runs.

Both profiles sample only the thread holding the GIL (``--gil``): in these processes that is
the Python CPU time, which is what limits them. ``--nonblocking`` keeps py-spy from pausing the
process it reads. The collapsed stacks stay in the work directory for flame graphs.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from bench.endtoend import BusLayout, wait_all_settled, wait_for_bus_workers
from bench.load import publish_body, publish_scenario, run_load, system_token
from bench.loadgen import SEQ
from bench.monitor import Monitor
from bench.names import E2E_EVENT_TYPE, E2E_MODULE, PUBLISH_MODULE
from bench.procs import BIN, Proc, Stack
from bench.profiles import shares, summarize
from bench.stack import BusConfig, Database, flush_queues, start_api
from bus.publish import service
from bus.runtime import Runtime
from bus.settings import Environment, Settings

PROFILE_TENANT = uuid.UUID("0f0f0f0f-0000-4000-8000-000000000001")

API_PARTS = {
    "token verification": "TokenVerifier.verify",
    "body read and JSON parse": "json_body (api/deps.py)",
    "validate, build the row (service.prepare_publish)": "prepare_publish (bus/publish/service.py)",
    "INSERT (one per group commit)": "insert_events (bus/storage/event_store.py)",
    "COMMIT": "Session.commit",
    "send to Redis (all of Dispatcher.send)": "Dispatcher.send",
    "  of it: the task-sent event (task_send_sent_event)": "EventDispatcher.publish",
    "response model validation and JSON": "serialize_response",
    "FastAPI dependency solving": "solve_dependencies",
    "hop to the thread pool and back": "run_sync_in_worker_thread",
}

WORKER_PARTS = {
    # The solo pool runs the task inside kombu's receive callback, so "receive" would contain
    # everything; these parts are nested as the stack nests them instead.
    "Celery runs the task (trace, request)": "fast_trace_task",
    "  the bus's task (eventbus.process_events)": "EventProcessor.process",
    "    claim of the batch: SELECT … FOR UPDATE SKIP LOCKED": "begin_many",
    "    handlers (no-op), each in its SAVEPOINT when it takes a session": "_run_handler",
    "    outcomes (one UPDATE)": "save_changes",
    "    COMMIT (and the sends of retries)": "UnitOfWork.commit",
    "task events (worker_send_task_events)": "EventDispatcher.send",
    "ack (acks_late)": "Message.ack",
    "logging": "Logger.",
}


def _py_spy(stack: Stack, out_dir: Path, name: str, pid: int, seconds: float | None) -> Proc:
    argv = [
        str(BIN / "py-spy"), "record",
        "--pid", str(pid),
        "--rate", "200",
        "--format", "raw",
        "--output", str(out_dir / f"{name}.raw"),
        "--gil", "--nonblocking",
    ]  # fmt: skip
    if seconds is not None:
        argv += ["--duration", str(int(seconds))]
    return stack.add(Proc(name, argv, log_dir=out_dir))


def _summary(path: Path, parts: dict[str, str]) -> dict[str, Any]:
    summary = summarize(path, top=25)
    return {
        "file": str(path),
        "samples": summary.samples,
        "parts_percent": shares(path, parts),
        "top_inclusive_percent": {
            name: round(100 * n / max(1, summary.samples), 1) for name, n in summary.inclusive
        },
        "top_self_percent": {
            name: round(100 * n / max(1, summary.samples), 1) for name, n in summary.self_time
        },
    }


def profile_api(
    stack: Stack, monitor: Monitor, out_dir: Path, db: Database, config: BusConfig
) -> dict[str, Any]:
    """One API process under publish load at concurrency 16 for 10 s."""
    db.truncate()
    token = system_token(config.jwt_secret, PROFILE_TENANT)
    api = start_api(stack, out_dir, config, 1, tag="profile")
    try:
        scenario = publish_scenario(
            "profile-api", token, PUBLISH_MODULE, "x", concurrency=16, duration=10, warmup=1
        )
        spy = _py_spy(stack, out_dir, "profile-api-publish", api.proc.pid, seconds=10)
        [result] = run_load(stack, monitor, out_dir, api.port, [scenario], "profile-api")
        spy.popen.wait(30)
        stack.stop(spy)
    finally:
        stack.stop(api.proc)
        db.truncate()
        flush_queues(config.broker_url, config.queue_prefix)
    summary = _summary(out_dir / "profile-api-publish.raw", API_PARTS)
    summary["rps_while_profiled"] = result["rps"]
    return summary


def profile_worker(
    stack: Stack, monitor: Monitor, out_dir: Path, db: Database, config: BusConfig, count: int
) -> dict[str, Any]:
    """One solo worker draining ``count`` events queued beforehand (so it runs flat out)."""
    db.truncate()
    token = system_token(config.jwt_secret, PROFILE_TENANT)
    api = start_api(stack, out_dir, config, 1, tag="profile-fill")
    try:
        scenario = publish_scenario(
            "profile-fill", token, E2E_MODULE, E2E_EVENT_TYPE, concurrency=16, count=count
        )
        run_load(stack, monitor, out_dir, api.port, [scenario], "profile-fill")
    finally:
        stack.stop(api.proc)
    layout = BusLayout(api_workers=0, pool="solo", workers=1, concurrency=1, relay=False)
    worker = stack.add(
        Proc(
            "profile-worker",
            [
                str(BIN / "eventbus"), "worker", "--modules", E2E_MODULE,
                "--pool", layout.pool, "--concurrency", "1", "--loglevel", "WARNING",
            ],
            log_dir=out_dir,
            env=config.env(),
        )
    )  # fmt: skip
    try:
        # Attach once it consumes: its start-up (imports) is not what it costs per event.
        wait_for_bus_workers(config.broker_url, 1, timeout=90)
        spy = _py_spy(stack, out_dir, "profile-worker-drain", worker.pid, seconds=None)
        wait_all_settled(db, count, [worker], PROFILE_TENANT)
        spy.interrupt()
        stack.stop(spy)
    finally:
        stack.stop(worker)
        db.truncate()
        flush_queues(config.broker_url, config.queue_prefix)
    return _summary(out_dir / "profile-worker-drain.raw", WORKER_PARTS)


def profile_publish_in_process(
    out_dir: Path, db: Database, config: BusConfig, count: int
) -> dict[str, Any]:
    """The bus's own publish path without HTTP, under pyinstrument, in this process.

    What the route and ``api.deps.Work`` do per request: verify, ``service.publish``,
    commit, send. Its CPU per event, set against the API's CPU per request, tells how much
    of a request is the bus and how much the HTTP stack around it.
    """
    from pyinstrument import Profiler

    settings = Settings(
        env=Environment.PRODUCTION,
        database_url=config.database_url,
        broker_url=config.broker_url,
        jwt_secret=config.jwt_secret,
        queue_prefix=config.queue_prefix,
        task_events=config.task_events,
    )
    runtime = Runtime(settings)
    header = "Bearer " + system_token(config.jwt_secret, PROFILE_TENANT)
    body = json.loads(publish_body(PUBLISH_MODULE, "inventory_updated").replace(SEQ, "1"))

    def publish_one() -> None:
        principal = runtime.verifier.verify(header)
        with runtime.unit_of_work() as uow:
            service.publish(uow, settings, principal, None, body)
            uow.commit()

    db.truncate()
    try:
        for _ in range(min(200, count)):
            publish_one()  # connections, producer pool, statement caches
        # Timed without the profiler, whose tracing hooks add to every call; then profiled.
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for _ in range(count):
            publish_one()
        cpu = time.process_time() - cpu_start
        wall = time.perf_counter() - wall_start
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(count):
            publish_one()
        profiler.stop()
    finally:
        runtime.close()
        db.truncate()
        flush_queues(config.broker_url, config.queue_prefix)
    text = profiler.output_text(unicode=False, color=False)
    path = out_dir / "profile-publish-in-process.txt"
    path.write_text(text)
    return {
        "file": str(path),
        "events": count,
        "wall_ms_per_event": round(1000 * wall / count, 3),
        "cpu_ms_per_event": round(1000 * cpu / count, 3),
        "tree": text.splitlines()[:60],
    }


def run_profiles(
    stack: Stack, monitor: Monitor, out_dir: Path, db: Database, config: BusConfig
) -> dict[str, Any]:
    return {
        "publish_in_process": profile_publish_in_process(out_dir, db, config, count=2000),
        "api_publish": profile_api(stack, monitor, out_dir, db, config),
        "worker_drain": profile_worker(stack, monitor, out_dir, db, config, count=3000),
    }
