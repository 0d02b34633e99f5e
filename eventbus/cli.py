"""``eventbus <command>``: migrate, api, worker, relay, dev, token."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable, Sequence

from bus.settings import get_settings

Command = Callable[[argparse.Namespace], int]


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database schema to the newest revision."""
    from bus.migrate import upgrade

    upgrade(args.database_url or get_settings().database_url, args.revision)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the HTTP API under uvicorn."""
    import uvicorn

    get_settings().signing_secret()  # refuse to start without a usable key
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
    )
    return 0


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

    p = sub.add_parser("token", help=cmd_token.__doc__)
    p.add_argument("--tenant", type=uuid.UUID, default=None)
    p.add_argument("--permission", action="append", default=[])
    p.add_argument("--admin", action="store_true", help="a system admin")
    p.add_argument("--system", action="store_true", help="a system-generated token")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    p.add_argument("--sub", default="dev")
    p.set_defaults(func=cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    return func(args)
