"""``eventbus archive list`` and ``eventbus archive restore FILE``: the history's days written
out by the retention when ``EVENTBUS_ARCHIVE_URL`` is set (:mod:`bus.maintenance.archive`).

Registered by :func:`add_commands` from ``eventbus.cli``; like its commands, these import the
bus inside their functions.
"""

from __future__ import annotations

import argparse
import sys

from bus.settings import get_settings


def cmd_archive_list(args: argparse.Namespace) -> int:
    """Print each archived day at EVENTBUS_ARCHIVE_URL: day, events, attempts, bytes, file."""
    from bus.maintenance.archive import Archive, ArchiveError

    url = args.url or get_settings().archive_url
    if not url:
        print("eventbus archive: EVENTBUS_ARCHIVE_URL is not set (or give --url)", file=sys.stderr)
        return 2
    archive = Archive(url)
    try:
        manifests = archive.manifests()
    except ArchiveError as exc:
        print(f"eventbus archive: {exc}", file=sys.stderr)
        return 1
    rows = [("day", "events", "attempts", "bytes", "file")]
    rows += [
        (m.day, str(m.events), str(m.attempts), str(m.size), f"{archive.url}/{m.file}")
        for m in manifests
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(
                [
                    row[0].ljust(widths[0]),
                    *(v.rjust(w) for v, w in zip(row[1:4], widths[1:], strict=True)),
                    row[4],
                ]
            )
        )
    return 0


def cmd_archive_restore(args: argparse.Namespace) -> int:
    """Bring an archived day back into the history as it was (finished; nothing is sent),
    kept from the retention for --keep-days; restoring twice stores nothing twice."""
    from datetime import timedelta

    from bus.maintenance.archive import KEEP_DAYS, Archive, ArchiveError, restore
    from bus.runtime import Runtime

    settings = get_settings()
    url = args.url or settings.archive_url or "."  # a bare file name is looked for there
    runtime = Runtime(settings)
    try:
        done = restore(
            runtime, Archive(url), args.file, keep=timedelta(days=args.keep_days or KEEP_DAYS)
        )
    except ArchiveError as exc:
        print(f"eventbus archive: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    print(
        f"restored {done.new_events} of {done.events} events and {done.new_attempts} of "
        f"{done.attempts} attempts (the others were stored already) into "
        f"{', '.join(done.partitions)}, kept until {done.keep_until:%Y-%m-%dT%H:%M:%SZ}"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``archive list`` and ``archive restore`` under the ``eventbus`` parser (importing no
    more of the bus: ``eventbus api`` builds this parser before prometheus_client's set-up)."""
    where = argparse.ArgumentParser(add_help=False)  # --url, shared by both commands
    where.add_argument("--url", default=None, help="default: EVENTBUS_ARCHIVE_URL")
    archive = sub.add_parser("archive", help="the history's days archived by the retention")
    commands = archive.add_subparsers(dest="archive_command", required=True)
    listing = commands.add_parser("list", parents=[where], help=cmd_archive_list.__doc__)
    listing.set_defaults(func=cmd_archive_list)
    q = commands.add_parser("restore", parents=[where], help=cmd_archive_restore.__doc__)
    q.add_argument("file", help="an archive's file name (in EVENTBUS_ARCHIVE_URL), path or URL")
    q.add_argument(
        "--keep-days",
        type=float,
        default=None,
        help="days the retention leaves the restored day alone (default 7)",
    )
    q.set_defaults(func=cmd_archive_restore)
