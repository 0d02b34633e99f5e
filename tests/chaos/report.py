"""Write the figures of the last chaos, soak and load runs into docs/reliability.md.

``python -m tests.chaos.report`` (``make reliability-doc``) replaces what lies between the
``<!-- chaos:start -->``/``<!-- chaos:end -->`` and ``<!-- load:start -->``/``<!-- load:end -->``
markers with tables built from ``tests/chaos/last_run.json`` and ``tests/load/last_run.json``;
the prose around them is left alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
CHAOS = ROOT / "tests" / "chaos" / "last_run.json"
LOAD = ROOT / "tests" / "load" / "last_run.json"
ORDER = [
    "worker_sigkill",
    "pool_child_oom",
    "redis_lost",
    "redis_down_api",
    "postgres_restart",
    "relay_kill",
    "api_kill_after_commit",
    "poison",
    "poison_whole_worker",
    "visibility_timeout",
    "ordered_worker_sigkill",
]


def _n(value: int) -> str:
    return f"{value:,}"


def _unanswered(r: dict[str, Any]) -> str:
    if not r["unanswered_publishes"]:
        return "0"
    return f"{r['unanswered_publishes']} ({r.get('unanswered_committed', '?')} committed)"


NETWORK = "net_"
"""Scenarios of the network suite (tests/faults) are named ``net_…``: a table of their own."""


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def network_table(runs: dict[str, Any]) -> str:
    names = sorted(n for n in runs if n.startswith(NETWORK))
    lines = [
        "| scenario | what was injected | published | processed | failed as scripted | lost "
        "| completed twice | duplicate deliveries absorbed | publishes unanswered | noticed after "
        "(s) | working again after (s) | what makes it hold |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = runs[name]
        lines.append(
            f"| `{name}` | {r['injected']} | {_n(r['published'])} | {_n(r['processed'])} "
            f"| {_n(r['failed_as_scripted'])} | **{r['lost']}** | **{r['completed_twice']}** "
            f"| {_n(r['duplicates_skipped'])} | {_unanswered(r)} "
            f"| {_seconds(r.get('detect_seconds'))} | {_seconds(r.get('recovery_seconds'))} "
            f"| {r['holds_by']} |"
        )
    stamps = sorted(runs[n].get("recorded_at", "") for n in names)
    if stamps:
        lines.append("")
        lines.append(f"Recorded {stamps[0]} to {stamps[-1]} (UTC).")
    return "\n".join(lines)


def chaos_table(runs: dict[str, Any]) -> str:
    runs = {n: r for n, r in runs.items() if not n.startswith(NETWORK)}
    names = [n for n in ORDER if n in runs] + sorted(n for n in runs if n not in ORDER)
    lines = [
        "| scenario | what was injected | published | processed | failed as scripted | lost "
        "| completed twice | restarted after a fault | outside effect repeated | duplicate "
        "deliveries absorbed | publishes unanswered | s | what makes it hold |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = runs[name]
        lines.append(
            f"| `{name}` | {r['injected']} | {_n(r['published'])} | {_n(r['processed'])} "
            f"| {_n(r['failed_as_scripted'])} | **{r['lost']}** | **{r['completed_twice']}** "
            f"| {r['restarted_after_fault']} | {r['outside_effect_repeated']} "
            f"| {_n(r['duplicates_skipped'])} | {_unanswered(r)} | {r['seconds']} "
            f"| {r['holds_by']} |"
        )
    stamps = sorted(r.get("recorded_at", "") for r in runs.values())
    if stamps:
        lines.append("")
        lines.append(f"Recorded {stamps[0]} to {stamps[-1]} (UTC).")
    return "\n".join(lines)


def load_table(runs: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, r in sorted(runs.items()):
        lines.append(
            f"`{name}`, recorded {r['recorded_at']}: {_n(r['requests'])} requests in "
            f"{r['seconds']} s = **{r['rps']} requests/s** at concurrency {r['concurrency']} "
            f"(85% publishes, 10% list pages, 5% stats), error rate **{r['error_rate']}**, "
            f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms. Statuses: "
            + ", ".join(f"{k}: {_n(v)}" for k, v in r["statuses"].items())
            + f". Events at the end: {r['events_by_status_at_end']}."
        )
        lines.append("")
        lines.append("| process | RSS after 5 s warm-up (MiB) | RSS at the end | growth | peak |")
        lines.append("|---|---|---|---|---|")
        for proc, rss in sorted(r["rss"].items()):
            lines.append(
                f"| {proc} | {rss['rss_after_warm_up_mib']} | {rss['rss_end_mib']} "
                f"| {rss['growth_after_warm_up_mib']:+} | {rss['rss_max_mib']} |"
            )
    return "\n".join(lines)


def replace(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {marker}:start -->).*?(<!-- {marker}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"docs/reliability.md has no {marker} markers")
    return pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text)


def main() -> None:
    text = DOC.read_text()
    if CHAOS.exists():
        runs = json.loads(CHAOS.read_text())
        text = replace(text, "chaos", chaos_table(runs))
        text = replace(text, "network", network_table(runs))
    if LOAD.exists():
        text = replace(text, "load", load_table(json.loads(LOAD.read_text())))
    DOC.write_text(text)
    print(f"updated {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
