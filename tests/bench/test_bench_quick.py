"""``python -m bench --quick`` end to end: the harness runs and every section has numbers.

A smoke test for the harness, not for performance: no figure is asserted against a target,
only that each phase produced one. The batch endpoint is part of the API: a probe answered 404
or 405 ("not available") fails this test like any other broken phase.
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
BATCHED = re.compile(r"^end-to-end batched: \d+ events/s = \d+\.\d\d x bare Celery$")
VS_PGQ = re.compile(r"^vs PgQueuer: \d+\.\d\d x$")
POSTGRES = re.compile(
    r"^batched, PostgreSQL: \d+\.\d{3} ms CPU per event \(target <= 0\.07\); "
    r"\d+\.\d\d index entries per completion \(\d+% HOT, \d+ indexes\)$"
)

pytestmark = pytest.mark.integration


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(420)
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
        timeout=400,
    )  # fmt: skip

    # Then it succeeds, and its last lines are the ratios and what PostgreSQL did
    assert proc.returncode == 0, proc.stderr[-4000:]
    single, batched, vs_pgq, postgres = proc.stdout.strip().splitlines()[-4:]
    assert POSTGRES.match(postgres), proc.stdout
    assert HEADLINE.match(single), proc.stdout
    results = json.loads(out.read_text())
    # and the batch endpoint answered: "not available" (404/405) is a regression, not a skip
    assert results["end_to_end_batched"]["available"], results["end_to_end_batched"]
    assert BATCHED.match(batched) and VS_PGQ.match(vs_pgq), proc.stdout
    assert out.with_suffix(".md").read_text().startswith("# eventbus benchmark")

    # and every section holds numbers
    for run in results["publish"].values():
        assert set(run["levels"]) == {"c1", "c16", "c64"}
        for level in run["levels"].values():
            assert level["ok"] > 0 and level["errors"] == 0
            assert all(_number(level[k]) for k in ("rps", "elapsed_s"))
            assert all(_number(level["latency_ms"][p]) for p in ("p50", "p99"))
        assert run["every_201_stored"]
        assert run["batch_endpoint"]["available"], run["batch_endpoint"]
        for level in run["batch_levels"].values():
            assert level["ok"] > 0 and level["errors"] == 0
            assert _number(level["events_per_s"]) and level["events_per_s"] > 0
        assert run["batch_levels"]

    # and the scheduler's lines print before them, from phases that ran
    printed = proc.stdout.strip().splitlines()
    for prefix in ("latency at 50%: ", "latency at 25%: ", "fairness: ", "order: ", "broker: "):
        assert any(line.startswith(prefix) for line in printed), (prefix, proc.stdout[-3000:])
    sched = results["scheduler"]
    assert sched["order"]["chaos"]["lost"] == 0 and sched["broker"]["lost"] == 0
    assert _number(sched["fairness"]["with_b"]["b_latency_ms"]["p99"])

    e2e = results["end_to_end"]["final"]
    assert e2e["processed"] == e2e["events"] and e2e["failed"] == 0
    assert _number(e2e["rate"]) and e2e["rate"] > 0
    assert all(_number(e2e["latency_ms"][p]) for p in ("p50", "p99"))

    bare = results["bare_celery"]["final"]
    assert _number(bare["rate"]) and bare["rate"] > 0

    _assert_batched_and_peers(results, e2e, bare)

    cases = results["listing"]["cases"]
    assert len(cases) == 12
    for case in cases:
        assert case["ok"] == case["requests"] > 0
        assert all(_number(case["latency_ms"][p]) for p in ("p50", "p99"))
        assert case["plans"] and all(plan["plan"] for plan in case["plans"])
    assert any(case["indexes"] for case in cases)

    peaks = results["memory"]["peak_rss"]
    for group in ("api", "bus_workers", "bare_celery_workers", "pgqueuer_workers"):
        assert _number(peaks[group]["tree_mib"]) and peaks[group]["tree_mib"] > 0

    assert set(results["targets"]) >= {
        "end_to_end_ratio",
        "end_to_end_batched_ratio",
        "vs_pgqueuer_ratio",
        "fixed_rate_p99",
        "publish_c64",
    }


def _assert_batched_and_peers(
    results: dict[str, Any], e2e: dict[str, Any], bare: dict[str, Any]
) -> None:
    """The batched end to end, PgQueuer, the fixed-rate latency and CPU per event."""
    batched_run = results["end_to_end_batched"]["final"]
    assert batched_run["processed"] == batched_run["events"] and batched_run["failed"] == 0
    assert _number(batched_run["rate"]) and batched_run["rate"] > 0
    assert batched_run["load"]["batch"] >= 100
    writes = batched_run["completion_writes"]
    assert writes["updates"] > 0 and 0 <= writes["hot_share"] <= 1

    pgq = results["pgqueuer"]["final"]
    assert _number(pgq["rate"]) and pgq["rate"] > 0 and pgq["not_successful"] == 0
    assert all(_number(pgq["latency_ms"][p]) for p in ("p50", "p99"))

    fixed = results["fixed_rate"]
    assert fixed["processed"] == fixed["events"] > 0 and fixed["failed"] == 0
    assert _number(fixed["offered_rate"]) and fixed["offered_rate"] > 0
    assert all(_number(fixed["latency_ms"][p]) for p in ("p50", "p99"))

    for run_ in (e2e, bare, pgq, fixed):
        assert run_["cpu_ms_per_event"] and all(
            _number(v) for v in run_["cpu_ms_per_event"].values()
        )

    head = results["headline"]
    assert _number(head["ratio"]) and _number(head["pgqueuer_rate"])
    assert _number(head["batched_ratio"]) and _number(head["pgqueuer_ratio"])
