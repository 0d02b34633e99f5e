"""``eventbus dev``: API, worker and maintenance in one process, on a SQLite file, with no servers.

The broker is kombu's in-memory transport (``memory://``) with the worker in a thread of the
same process. Chosen over kombu's SQLAlchemy transport on a second SQLite file because the bus
already keeps every event in its own database, which is the outbox: whatever the in-memory
queues held when the process stopped is sent again at the next start (the send stamps of
unfinished events are forgotten and the re-send chore sends them at once). So nothing is lost,
there is no second file to lock against, and delivery is immediate: the worker polls the
in-memory queue every 20 ms, where the SQLAlchemy transport would poll a table. What it cannot
do is serve workers in other processes; use Redis or RabbitMQ for that.

Data survives restarts (the SQLite file); Ctrl-C or SIGTERM stops it cleanly: the API stops
accepting, the running handler finishes, the maintenance chores end their pass.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from types import FrameType

import uvicorn

from api.app import create_app
from api.server import uvicorn_options
from bus.auth import mint_token
from bus.maintenance.runner import Maintenance
from bus.observability import tracing
from bus.runtime import Runtime
from bus.settings import Settings
from bus.storage.migrate import upgrade
from workers.registry import load_handlers, registry
from workers.worker import EmbeddedWorker, resolve_modules

log = logging.getLogger("eventbus.dev")

DEV_TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")
"""The tenant of the printed token: fixed, so events stay visible across restarts."""

EXAMPLE_HANDLERS = "workers.examples"
_EXAMPLE_BODY = (
    '{"event_type": "inventory_updated", "source_module": "inventory", '
    '"target_module": "warehouse", "entity_type": "inventory_item", "entity_id": "item-1", '
    '"event_data": {"previous_quantity": 100, "new_quantity": 95, "warehouse_id": "wh-1"}}'
)


def run_dev(settings: Settings, host: str, port: int, loglevel: str = "INFO") -> int:
    """Run until SIGINT/SIGTERM; returns 0 after a clean stop."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(settings, host, port, loglevel, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(settings: Settings, host: str, port: int, loglevel: str, stop: threading.Event) -> int:
    upgrade(settings.database_url)
    load_handlers([EXAMPLE_HANDLERS, *settings.handlers.split(",")])
    modules = resolve_modules(None, registry)
    runtime = Runtime(settings)
    if settings.otel_enabled:
        tracing.setup("eventbus-dev")  # one process: the API's, the worker's, the re-send's spans

    worker = EmbeddedWorker(runtime, modules, loglevel=loglevel)
    maintenance = Maintenance(runtime)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime=runtime),
            host=host,
            port=port,
            log_level=loglevel.lower(),
            lifespan="off",
            **uvicorn_options(settings),
        )
    )
    threads = [
        threading.Thread(target=maintenance.run, name="maintenance", daemon=True),
        threading.Thread(target=server.run, name="api", daemon=True),
    ]
    try:
        worker.start()
        for thread in threads:
            thread.start()
        while not server.started and threads[1].is_alive() and not stop.is_set():
            time.sleep(0.02)
        if not server.started:
            if not stop.is_set():
                log.error("the API did not start (is port %d free?)", port)
                return 1
            return 0
        _print_banner(settings, host, port, modules)
        stop.wait()
        return 0
    finally:
        server.should_exit = True
        maintenance.stop()
        for thread in threads:
            thread.join(10)
        log.info("api and maintenance stopped")
        worker.stop()
        log.info("worker stopped")
        runtime.close()
        log.info("stopped")


def _print_banner(settings: Settings, host: str, port: int, modules: list[str]) -> None:
    token = mint_token(
        settings.signing_secret(),
        sub="dev",
        tenant_id=DEV_TENANT,
        permissions=["manage:system"],
        ttl_seconds=7 * 24 * 3600,
        issuer=settings.jwt_issuer or None,
        audience=settings.jwt_audience or None,
    )
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    print(
        f"""
eventbus dev is ready: API {base} (docs {base}/docs), worker for {", ".join(modules)}, maintenance.
Database {settings.database_url}, broker {settings.broker_url}. Ctrl-C stops it.

export EVENTBUS_TOKEN={token}

Dashboard: open {base}/ui and paste the token above (it stays in that tab only).

curl -s -X POST "{base}/system/events" -H "Authorization: Bearer $EVENTBUS_TOKEN" \\
  -H "Content-Type: application/json" -d '{_EXAMPLE_BODY}'
curl -s "{base}/system/events?limit=5" -H "Authorization: Bearer $EVENTBUS_TOKEN"
""",
        flush=True,
    )
