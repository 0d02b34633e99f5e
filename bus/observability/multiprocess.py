"""prometheus_client's multiprocess mode, set up before anything imports prometheus_client.

Under several uvicorn workers or Celery's prefork pool each process keeps its own counters; in
multiprocess mode each writes them to files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape sums
the files of every process, dead ones included (a counter keeps what it counted). The variable
is read when prometheus_client is imported, so this module must not import it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(*, needed: bool) -> Path | None:
    """Make the metrics directory ready for this process and the processes it will start.

    A directory given in ``PROMETHEUS_MULTIPROC_DIR`` is emptied of a previous run's files (a
    restarted container keeps its ``/tmp`` volume; stale files would add old counts to the new
    ones). Without one, and when several processes will count (``needed``), a fresh directory
    is made under the temp dir and exported. Returns the directory this call created, for
    :func:`remove`, or None.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    if not needed:
        return None
    if "prometheus_client" in sys.modules:
        raise RuntimeError(f"prometheus_client was imported before {ENV} was set")
    created = Path(tempfile.mkdtemp(prefix="eventbus-metrics-"))
    os.environ[ENV] = str(created)
    return created


def remove(created: Path | None) -> None:
    """Delete a directory :func:`prepare` made, once the processes that wrote there are gone."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
