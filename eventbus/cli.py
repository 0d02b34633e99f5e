"""``eventbus <command>``: migrate, api, worker, maintenance (``relay``, its old name), dev,
flower, token, dead-letters, outbox init, forward, archive (``eventbus.archive_cli``).

Commands import what they need inside their function: ``PROMETHEUS_MULTIPROC_DIR`` must be set
(:mod:`bus.observability.multiprocess`) before anything imports prometheus_client, which
``bus.observability.metrics`` does (and most of the bus imports it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bus.auth import Principal
from bus.observability import logs, multiprocess
from bus.settings import Settings, get_settings
from eventbus import archive_cli

if TYPE_CHECKING:
    from bus.runtime import Runtime

log = logging.getLogger("eventbus.cli")


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database schema to the newest revision."""
    from bus.storage.migrate import upgrade

    upgrade(args.database_url or get_settings().database_url, args.revision)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the HTTP API under uvicorn."""
    import uvicorn

    from api.server import uvicorn_options

    settings = get_settings()
    settings.signing_secret()  # refuse to start without a usable key
    _setup_logging(args.log_level, settings)
    created = _metrics_dir(needed=args.workers > 1)
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            log_config=logs.dict_config(
                args.log_level, json_output=logs.wants_json(settings.log_format)
            ),
            access_log=False,
            **uvicorn_options(settings),
        )
    finally:
        multiprocess.remove(created)
    return 0


def _setup_logging(level: str, settings: Settings | None = None) -> None:
    log_format = (settings or get_settings()).log_format
    logs.configure(level, json_output=logs.wants_json(log_format))


def _metrics_dir(*, needed: bool) -> Path | None:
    """Set up prometheus_client's multiprocess directory (before its import), and say where."""
    created = multiprocess.prepare(needed=needed)
    if os.environ.get(multiprocess.ENV):
        log.info("prometheus multiprocess files in %s", os.environ[multiprocess.ENV])
    return created


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker on the queues of the given modules (default: every handled one),
    serving Prometheus /metrics for all its pool processes on EVENTBUS_METRICS_PORT."""
    settings = get_settings()
    _setup_logging(args.loglevel, settings)
    created = _metrics_dir(needed=args.pool == "prefork")
    try:
        return _run_worker(args, settings)
    finally:
        multiprocess.remove(created)


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from bus.runtime import Runtime
    from workers.registry import load_handlers
    from workers.worker import NoModules, resolve_modules, run_worker, serve_metrics

    load_handlers(settings.handlers)
    try:
        modules = resolve_modules(_split(args.modules))
    except NoModules as exc:
        print(f"eventbus worker: {exc}", file=sys.stderr)
        return 2
    try:
        stop_metrics = serve_metrics(settings.metrics_port)
    except OSError as exc:
        print(
            f"eventbus worker: cannot serve metrics on port {settings.metrics_port} ({exc}); "
            "set EVENTBUS_METRICS_PORT to a free port, or 0 for none",
            file=sys.stderr,
        )
        return 2
    runtime = Runtime(settings)
    try:
        if not _wait_for_schema(runtime):
            return 0
        return run_worker(
            runtime, modules, concurrency=args.concurrency, pool=args.pool, loglevel=args.loglevel
        )
    finally:
        runtime.close()
        stop_metrics()


def _wait_for_schema(runtime: Runtime) -> bool:
    """Wait, before consuming anything, until ``eventbus migrate`` has run (one line says so);
    ``False`` if SIGTERM/SIGINT came first. /metrics answers meanwhile: a liveness probe must
    not restart a worker that only waits."""
    import threading

    from bus.storage.migrate import wait_until_current

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        return wait_until_current(runtime.engine, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

OPERATOR = Principal(
    sub="eventbus-cli",
    tenant_id=None,
    permissions=frozenset({"manage:system"}),
    is_system_admin=True,
    token_type="system",
)
"""Who a command run on the bus's own database acts as: a system admin."""


def cmd_maintenance(args: argparse.Namespace) -> int:
    """The bus's background chores (re-send, count folds, purges); loop until SIGTERM/SIGINT."""
    from bus.maintenance.resend import run_once
    from bus.maintenance.runner import Maintenance
    from bus.observability import metrics
    from bus.runtime import Runtime

    _setup_logging(args.loglevel)
    runtime = Runtime(get_settings())
    if runtime.settings.otel_enabled:
        from bus.observability import tracing

        tracing.setup("eventbus-relay")
    try:
        if args.once:
            print(run_once(runtime))
            return 0
        maintenance = Maintenance(runtime)
        stop_metrics = metrics.serve(args.metrics_port) if args.metrics_port else None

        def stop(_signum: int, _frame: FrameType | None) -> None:
            maintenance.stop()

        # Before `eventbus migrate` has run, every pass would fail the same way: say it once.
        if not _wait_for_schema(runtime):
            return 0
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            maintenance.run()
        finally:
            if stop_metrics is not None:
                stop_metrics()
        return 0
    finally:
        runtime.close()


def cmd_dev(args: argparse.Namespace) -> int:
    """API + worker + relay in one process on SQLite and an in-memory broker: no servers."""
    from eventbus.dev import run_dev

    _setup_logging(args.loglevel)
    settings = get_settings().model_copy(update={"broker_url": args.broker_url})
    return run_dev(settings, args.host, args.port, args.loglevel)


def cmd_flower(args: argparse.Namespace) -> int:
    """Flower, Celery's monitor, on the bus's broker, behind basic auth from
    EVENTBUS_FLOWER_BASIC_AUTH (user:password); /healthcheck answers without it."""
    settings = get_settings()
    try:
        credentials = settings.flower_credentials()
    except ValueError as exc:
        print(f"eventbus flower: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.loglevel, settings)
    from bus.broker.celery_app import make_celery

    # Handed over in Flower's environment, not on its command line, which `ps` shows anyone.
    os.environ["FLOWER_BASIC_AUTH"] = ",".join(credentials)
    os.environ.pop("FLOWER_UNAUTHENTICATED_API", None)
    code = make_celery(settings).start(
        ["flower", f"--port={args.port}", f"--address={args.address}"]
    )
    return int(code or 0)


def cmd_token(args: argparse.Namespace) -> int:
    """Print a signed HS256 token for development and tests."""
    from bus.auth import mint_token

    settings = get_settings()
    print(
        mint_token(
            settings.signing_secret(),
            sub=args.sub,
            tenant_id=args.tenant,
            permissions=args.permission,
            is_system_admin=args.admin,
            token_type="system" if args.system else "user",
            ttl_seconds=args.ttl,
            issuer=settings.jwt_issuer or None,
            audience=settings.jwt_audience or None,
        )
    )
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List (one JSON line each: size, reason, first bytes) or purge the messages a module's
    workers refused, kept on <queue>.dead."""
    from bus.broker.inspector import BrokerInspector
    from bus.broker.queues import queue_name

    settings = get_settings()
    queue = queue_name(args.module, settings.queue_prefix)
    inspector = BrokerInspector(
        settings.broker_url, timeout=5.0, sentinel_master=settings.broker_sentinel_master
    )
    try:
        if args.purge:
            print(f"purged {inspector.purge_dead_letters(queue)} from {queue}.dead")
            return 0
        for item in inspector.dead_letters(queue, args.limit):
            print(item.line())
        return 0
    finally:
        inspector.close()


def cmd_outbox_init(args: argparse.Namespace) -> int:
    """Create the eventbus_outbox table in a caller's own database (PostgreSQL)."""
    from sqlalchemy import create_engine

    from eventbus.outbox import init

    engine = create_engine(_sqlalchemy_url(args.database_url))
    try:
        init(engine)
    finally:
        engine.dispose()
    print(f"eventbus_outbox ready in {engine.url.render_as_string(hide_password=True)}")
    return 0


def _sqlalchemy_url(url: str) -> str:
    """``postgresql://`` as psycopg 3 (the driver the bus ships), not SQLAlchemy's psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def cmd_forward(args: argparse.Namespace) -> int:
    """Drain a caller's eventbus_outbox into the bus (its database and broker, or --api over
    HTTP); loop until SIGTERM/SIGINT, or one batch with --once."""
    from datetime import timedelta

    from sqlalchemy import create_engine

    from eventbus.outbox import ApiSink, BusSink, Forwarder, Sink

    settings = get_settings()
    _setup_logging(args.loglevel, settings)
    if bool(args.api) != bool(args.token):
        print("eventbus forward: --api and --token go together", file=sys.stderr)
        return 2
    engine = create_engine(_sqlalchemy_url(args.database_url))
    closers: list[Callable[[], None]] = [engine.dispose]
    sink: Sink
    if args.api:
        from eventbus.client import Client

        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded row
        client = Client(args.api, args.token)
        closers.append(client.close)
        sink = ApiSink(client)
    else:
        from bus.runtime import Runtime

        runtime = Runtime(settings)
        closers.append(runtime.close)
        sink = BusSink(runtime)
    retention = (
        settings.outbox_retention_seconds
        if args.retention_seconds is None
        else args.retention_seconds
    )
    forwarder = Forwarder(
        engine,
        sink,
        batch_size=args.batch_size or settings.outbox_batch_size,
        retention=timedelta(seconds=retention),
        interval=args.interval,
    )
    try:
        if args.once:
            print(f"forwarded {forwarder.run_once()} rows")
            return 0

        def stop(_signum: int, _frame: FrameType | None) -> None:
            forwarder.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("forwarding eventbus_outbox")
        forwarder.run()
        return 0
    finally:
        for close in reversed(closers):
            close()


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a module's delivery (its events wait; nothing is lost) or, with --resume, resume
    it; straight on the database of the EVENTBUS_* settings. Prints the module's state."""
    from bus.delivery import control
    from bus.runtime import Runtime

    runtime = Runtime(get_settings())
    try:
        with runtime.unit_of_work() as uow:
            if args.resume:
                state = control.resume(uow, OPERATOR, args.module)
            else:
                state = control.pause(uow, OPERATOR, args.module, args.reason)
            uow.commit()
    finally:
        runtime.close()
    print(json.dumps(state))
    return 0


def cmd_held_keys(args: argparse.Namespace) -> int:
    """List held keys (one JSON line each), or release the one held by --release EVENT_ID."""
    from bus.delivery import control
    from bus.errors import BusError
    from bus.runtime import Runtime

    runtime = Runtime(get_settings())
    try:
        with runtime.unit_of_work() as uow:
            if args.release:
                try:
                    print(json.dumps(control.release(uow, OPERATOR, args.release, args.tenant)))
                except BusError as exc:
                    print(f"eventbus held-keys: {exc.message}", file=sys.stderr)
                    return 1
                uow.commit()
                return 0
            for key in control.held_keys(uow.session, OPERATOR, args.tenant, args.module):
                print(json.dumps(key))
    finally:
        runtime.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Set the events a filter matches pending again and send them (the PUT … pending rule, in
    batches), straight on the database and broker of the EVENTBUS_* settings; prints
    matched/replayed. --dry-run only counts."""
    from bus.errors import BusError
    from bus.publish import replay
    from bus.runtime import Runtime

    settings = get_settings()
    _setup_logging(args.loglevel, settings)
    try:
        query = replay.parse_replay(
            {
                "status": args.status,
                "target_module": args.module,
                "source_module": args.source,
                "event_type": args.type,
                "entity_type": args.entity_type,
                "created_after": args.created_after,
                "created_before": args.created_before,
                "dry_run": args.dry_run,
                "max": args.max,
            }
        )
    except BusError as exc:
        print(f"eventbus replay: {exc.message}", file=sys.stderr)
        return 2
    runtime = Runtime(settings)
    try:
        result = replay.run(runtime.unit_of_work, settings, args.tenant, query)
    finally:
        runtime.close()
    print(f"matched {result.matched}, replayed {result.replayed}" + (" (dry run)" * query.dry_run))
    return 0


def _add_replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pause", help=cmd_pause.__doc__)
    p.add_argument("module")
    p.add_argument("--reason", default=None)
    p.add_argument("--resume", action="store_true", help="resume the module instead")
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("held-keys", help=cmd_held_keys.__doc__)
    p.add_argument("--module", default=None)
    p.add_argument("--tenant", default=None, help="one tenant's (default: every tenant's)")
    p.add_argument("--release", metavar="EVENT_ID", default=None)
    p.set_defaults(func=cmd_held_keys)

    p = sub.add_parser("replay", help=cmd_replay.__doc__)
    p.add_argument("--status", default=None, help="pending, processed or failed")
    p.add_argument("--module", default=None, help="the target module")
    p.add_argument("--source", default=None, help="the source module")
    p.add_argument("--type", default=None, help="the event type")
    p.add_argument("--entity-type", default=None)
    p.add_argument("--tenant", type=uuid.UUID, default=None, help="default: every tenant")
    p.add_argument("--created-after", default=None, help="RFC 3339: created at or after it")
    p.add_argument("--created-before", default=None, help="RFC 3339: created before it")
    p.add_argument("--dry-run", action="store_true", help="count the matches, change nothing")
    p.add_argument("--max", type=int, default=10_000, help="replay at most this many (1..100000)")
    p.add_argument("--loglevel", default="WARNING")
    p.set_defaults(func=cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventbus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help=cmd_migrate.__doc__)
    p.add_argument("--database-url", default=None, help="default: EVENTBUS_DATABASE_URL")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("api", help=cmd_api.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help=cmd_worker.__doc__)
    p.add_argument("--modules", default=None, help="comma-separated, e.g. warehouse,notifications")
    p.add_argument("--concurrency", type=int, default=None, help="default: one per CPU")
    p.add_argument("--pool", choices=("prefork", "threads", "solo"), default="prefork")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    # "relay" is the name of releases before 0.2; it stays an alias for one release.
    p = sub.add_parser("maintenance", aliases=["relay"], help=cmd_maintenance.__doc__)
    p.add_argument("--once", action="store_true", help="re-send one batch, print how many, exit")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve /metrics (eventbus_maintenance_failures_total{chore}) on this port; 0: none",
    )
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_maintenance)

    p = sub.add_parser("dev", help=cmd_dev.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument(
        "--broker-url", default="memory://localhost/", help="default: the embedded in-memory broker"
    )
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("flower", help=cmd_flower.__doc__)
    p.add_argument("--port", type=int, default=5555)
    p.add_argument(
        "--address", default="127.0.0.1", help="default: loopback only (it can stop workers)"
    )
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_flower)

    p = sub.add_parser("token", help=cmd_token.__doc__)
    p.add_argument("--tenant", type=uuid.UUID, default=None)
    p.add_argument("--permission", action="append", default=[])
    p.add_argument("--admin", action="store_true", help="a system admin")
    p.add_argument("--system", action="store_true", help="a system-generated token")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    p.add_argument("--sub", default="dev")
    p.set_defaults(func=cmd_token)

    _add_replay_parser(sub)

    p = sub.add_parser("dead-letters", help=cmd_dead_letters.__doc__)
    p.add_argument("--module", required=True, help="the module whose refused messages to show")
    p.add_argument("--purge", action="store_true", help="delete them instead of listing")
    p.add_argument("--limit", type=int, default=100, help="at most this many (newest first)")
    p.set_defaults(func=cmd_dead_letters)
    _add_outbox_commands(sub)
    archive_cli.add_commands(sub)
    return parser


def _add_outbox_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("outbox", help="the transactional outbox in a caller's database")
    outbox = p.add_subparsers(dest="outbox_command", required=True)
    q = outbox.add_parser("init", help=cmd_outbox_init.__doc__)
    q.add_argument("--database-url", required=True, help="the caller's database (PostgreSQL)")
    q.set_defaults(func=cmd_outbox_init)

    p = sub.add_parser("forward", help=cmd_forward.__doc__)
    p.add_argument("--database-url", required=True, help="the caller's database (PostgreSQL)")
    p.add_argument("--api", default=None, help="forward over HTTP to this base URL instead")
    p.add_argument(
        "--token",
        default=None,
        help="with --api: a token that may publish for every tenant in the outbox",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="default: EVENTBUS_OUTBOX_BATCH_SIZE"
    )
    p.add_argument(
        "--retention-seconds",
        type=float,
        default=None,
        help="purge forwarded rows after this; default: EVENTBUS_OUTBOX_RETENTION_SECONDS",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls when idle")
    p.add_argument("--once", action="store_true", help="forward one batch, print how many, exit")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_forward)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
