"""``python -m bench --quick`` end to end: the harness runs and every section has numbers.

A smoke test for the harness, not for performance: no figure is asserted against a target,
only that each phase produced one.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HEADLINE = re.compile(r"^end-to-end: \d+ events/s = \d+\.\d\d x bare Celery$")

pytestmark = pytest.mark.integration


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(120)
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    # Given a scratch output and a database of this test's own
    out = tmp_path / "results.json"
    database = f"eventbus_bench_smoke_{os.getpid()}"

    # When the quick mode runs as `make bench-quick` would
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out),
         "--work-dir", str(tmp_path / "work"), "--database", database],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=110,
    )  # fmt: skip

    # Then it succeeds, and its last line is the headline
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert HEADLINE.match(proc.stdout.strip().splitlines()[-1]), proc.stdout
    results = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("# eventbus benchmark")

    # and every section holds numbers
    for run in results["publish"].values():
        assert set(run["levels"]) == {"c1", "c16", "c64"}
        for level in run["levels"].values():
            assert level["ok"] > 0 and level["errors"] == 0
            assert all(_number(level[k]) for k in ("rps", "elapsed_s"))
            assert all(_number(level["latency_ms"][p]) for p in ("p50", "p99"))
        assert run["every_201_stored"]

    e2e = results["end_to_end"]["final"]
    assert e2e["processed"] == e2e["events"] and e2e["failed"] == 0
    assert _number(e2e["rate"]) and e2e["rate"] > 0
    assert all(_number(e2e["latency_ms"][p]) for p in ("p50", "p99"))

    bare = results["bare_celery"]["final"]
    assert _number(bare["rate"]) and bare["rate"] > 0

    assert _number(results["headline"]["ratio"])

    cases = results["listing"]["cases"]
    assert len(cases) == 12
    for case in cases:
        assert case["ok"] == case["requests"] > 0
        assert all(_number(case["latency_ms"][p]) for p in ("p50", "p99"))
        assert case["plans"] and all(plan["plan"] for plan in case["plans"])
    assert any(case["indexes"] for case in cases)

    peaks = results["memory"]["peak_rss"]
    for group in ("api", "bus_workers", "bare_celery_workers"):
        assert _number(peaks[group]["tree_mib"]) and peaks[group]["tree_mib"] > 0

    assert set(results["targets"]) >= {"end_to_end_ratio", "publish_c64"}
