"""PROMETHEUS_MULTIPROC_DIR is made ready before prometheus_client is imported: a given
directory loses a previous run's files, and one is made when several processes will count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus.observability import multiprocess

ROOT = Path(__file__).resolve().parents[2]


def test_a_given_directory_is_emptied_of_stale_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "counter_12345.db").write_bytes(b"stale")
    (tmp_path / "histogram_12345.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(multiprocess.ENV, str(tmp_path))

    assert multiprocess.prepare(needed=True) is None  # nothing created: nothing to remove

    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_missing_given_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a" / "b"
    monkeypatch.setenv(multiprocess.ENV, str(target))
    multiprocess.prepare(needed=False)
    assert target.is_dir()


def test_one_process_needs_no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multiprocess.ENV, raising=False)
    assert multiprocess.prepare(needed=False) is None
    assert multiprocess.ENV not in os.environ


def test_several_processes_get_a_fresh_directory_before_the_import() -> None:
    # A fresh interpreter, as the CLI is: the directory is made and exported, and metrics
    # counted afterwards land there as files.
    script = (
        "import os\n"
        "from bus.observability import multiprocess\n"
        "made = multiprocess.prepare(needed=True)\n"
        "assert made is not None and os.environ[multiprocess.ENV] == str(made)\n"
        "from bus.observability import metrics\n"
        "metrics.count_published('warehouse', 'x')\n"
        "print(sorted(p.name.split('_')[0] for p in made.iterdir()))\n"
        "multiprocess.remove(made)\n"
        "print(made.exists())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != multiprocess.ENV}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert "counter" in out[0]
    assert out[1] == "False"


def test_an_import_too_early_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # prometheus_client is imported in this test process already
    monkeypatch.delenv(multiprocess.ENV, raising=False)
    with pytest.raises(RuntimeError, match="imported before"):
        multiprocess.prepare(needed=True)
