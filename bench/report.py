"""The headline, the round's targets, and ``results.md`` (the README's Performance table)."""

from __future__ import annotations

from typing import Any

TARGET_E2E_RATIO = 0.5
TARGET_PUBLISH_RPS = 1500.0
TARGET_PUBLISH_P99_MS = 100.0
TARGET_LIST_P99_MS = 20.0
NONE = "-"


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The bus's end-to-end rate as a ratio of bare Celery's, on the same machine and run."""
    bus = float(results["end_to_end"]["final"]["rate"])
    bare = float(results["bare_celery"]["final"]["rate"])
    ratio = bus / bare if bare > 0 else 0.0
    return {
        "bus_rate": bus,
        "bare_rate": bare,
        "ratio": round(ratio, 3),
        "line": f"end-to-end: {bus:.0f} events/s = {ratio:.2f} x bare Celery",
    }


def _best_publish(results: dict[str, Any], level: str) -> tuple[str, dict[str, Any]]:
    runs = results["publish"]
    key = max(runs, key=lambda k: runs[k]["levels"][level]["rps"])
    return key, runs[key]["levels"][level]


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """This round's targets; reported, never asserted (a shared machine makes them noisy)."""
    ratio = results["headline"]["ratio"]
    which, c64 = _best_publish(results, "c64")
    checks: dict[str, Any] = {
        "end_to_end_ratio": {
            "target": f">= {TARGET_E2E_RATIO} x bare Celery",
            "value": ratio,
            "met": ratio >= TARGET_E2E_RATIO,
        },
        "publish_c64": {
            "target": f">= {TARGET_PUBLISH_RPS:.0f}/s with p99 < {TARGET_PUBLISH_P99_MS:.0f} ms",
            "value": {"rps": c64["rps"], "p99_ms": c64["latency_ms"]["p99"], "api": which},
            "met": c64["rps"] >= TARGET_PUBLISH_RPS
            and c64["latency_ms"]["p99"] < TARGET_PUBLISH_P99_MS,
        },
    }
    for case in results["listing"]["cases"]:
        if not case["filters"] and case["page"] == 1:
            checks[f"list_{case['tenant']}_tenant_page1"] = {
                "target": f"p99 < {TARGET_LIST_P99_MS:.0f} ms (page with its total)",
                "value": {"p99_ms": case["latency_ms"]["p99"], "total": case["total"]},
                "met": case["latency_ms"]["p99"] < TARGET_LIST_P99_MS,
            }
    return checks


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return NONE
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _cores(usage: dict[str, Any]) -> str:
    used = ", ".join(f"{group} {cores:.2f}" for group, cores in usage["cpu_cores"].items())
    return f"{used}, rest of the machine {usage['other_cores']:.2f}"


def _profiles(profiles: dict[str, Any] | None) -> list[str]:
    if not profiles:
        return []
    inproc = profiles["publish_in_process"]
    lines = [
        "",
        "## Where the time goes (`--profile`: py-spy `--gil`, outside the timed runs)",
        "",
        f"The bus's publish path without HTTP (verify, `service.publish`, commit, send), "
        f"in one process: {inproc['cpu_ms_per_event']} ms CPU and "
        f"{inproc['wall_ms_per_event']} ms wall per event.",
        "",
    ]
    titles = {
        "api_publish": "API process under publish load (share of its Python CPU)",
        "worker_drain": "solo worker draining a backlog (share of its Python CPU)",
    }
    for key, title in titles.items():
        profile = profiles[key]
        lines += [f"{title}, {profile['samples']} samples:", "", "| part | % |", "|---|---|"]
        lines += [
            f"| {part.strip()}{' (nested)' if part.startswith(' ') else ''} | {pct} |"
            for part, pct in profile["parts_percent"].items()
        ]
        lines.append("")
    return lines


def _bus_settings(meta: dict[str, Any]) -> str:
    events = meta.get("bus_settings", {}).get("EVENTBUS_TASK_EVENTS", True)
    if events:
        return "Bus settings: the defaults (Celery task events on, for Flower)."
    return (
        "Bus settings: the defaults but `EVENTBUS_TASK_EVENTS=false`: no Celery task events "
        "(Flower lists no tasks), as bare Celery sends none by default. Every delivery "
        "guarantee is unchanged (acks late, prefetch 1, the row-lock claim)."
    )


def _events_note(meta: dict[str, Any]) -> str:
    on = meta.get("bus_settings", {}).get("EVENTBUS_TASK_EVENTS", True)
    return "" if on else ", task events off"


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        "# eventbus benchmark",
        "",
        f"`make bench` ({meta['mode']} mode), {meta['started_at']}, commit {meta['commit']}"
        + (" plus uncommitted changes" if meta.get("uncommitted_paths") else "")
        + f". Machine: {machine['cores']} cores, {machine['memory_gib']} GiB, load average "
        f"{machine['load_average_at_start'][0]} at start; PostgreSQL "
        f"{meta['versions']['postgresql']}, Redis {meta['versions']['redis']} (AOF everysec), "
        f"Celery {meta['versions']['celery']}.",
        "",
        meta["layout"] + " Load generator: " + meta["load_generator"] + ".",
        "",
        _bus_settings(meta),
        "",
        f"**{results['headline']['line']}**",
        "",
        "## Publish: `POST /system/events` (HS256 token verified per request)",
        "",
        "| API processes | concurrency | events/s | p50 ms | p99 ms | API cores | "
        "PostgreSQL cores | load-gen cores | rest of machine | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["publish"].values():
        for level in run["levels"].values():
            cores = level["usage"]["cpu_cores"]
            lines.append(
                f"| {run['api_workers']} | {level['concurrency']} | {_f(level['rps'])} | "
                f"{_f(level['latency_ms']['p50'], 1)} | {_f(level['latency_ms']['p99'], 1)} | "
                f"{_f(cores.get('api'), 2)} | {_f(cores.get('postgres'), 2)} | "
                f"{_f(cores.get('loadgen'), 2)} | {_f(level['usage']['other_cores'], 2)} | "
                f"{level['errors'] + level['requests'] - level['ok']} |"
            )
    e2e = results["end_to_end"]["final"]
    bare = results["bare_celery"]["final"]
    lines += [
        "",
        f"## End to end: {e2e['events']:,} events, no-op handler",
        "",
        "| | configuration | events/s | publish → processed p50 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| eventbus | {e2e['label']}{_events_note(meta)} | {_f(e2e['rate'])} | "
        f"{_f(e2e['latency_ms']['p50'])} | "
        f"{_f(e2e['latency_ms']['p99'])} |",
        f"| bare Celery | {bare['label']} | {_f(bare['rate'])} | {NONE} | {NONE} |",
        "",
        "eventbus: from the first `POST` to the last `processed_at`, events published by the "
        f"load generator at concurrency {e2e['publish_concurrency']}; latency from each row's "
        "`created_at` to its `processed_at`. Bare Celery: `apply_async` from one publisher "
        "process, from the first send until a Redis counter the task INCRs reached N.",
        "",
        "Cores used meanwhile: eventbus "
        + _cores(e2e["usage"])
        + "; bare Celery "
        + _cores(bare["usage"])
        + ".",
        "",
        f"eventbus publishing ran at {_f(e2e['publish']['rps'])}/s (p99 "
        f"{_f(e2e['publish']['latency_ms']['p99'])} ms); when it ended "
        f"{_f(e2e.get('backlog_when_publishing_ended'))} events were still to process, "
        f"drained at {_f(e2e.get('drain_rate_after_publishing'))}/s by the workers alone.",
        "",
        "Layouts tried (at the search size, the fastest then measured at the full N):",
        "",
        "| side | configuration | events | events/s |",
        "|---|---|---|---|",
    ]
    for side, key in (("bare Celery", "bare_celery"), ("eventbus", "end_to_end")):
        for tried in results[key]["search"]:
            count = tried.get("tasks", tried.get("events"))
            lines.append(f"| {side} | {tried['label']} | {_f(count)} | {_f(tried['rate'])} |")
    listing = results["listing"]
    data = listing["data"]
    lines += [
        "",
        f"## Listing: {data['rows']:,} rows, {data['tenants']} tenants, {data['modules']} "
        "modules, 3 statuses",
        "",
        f'One tenant ("big") holds {data["big_tenant_share"]:.0%} of the rows, the other '
        f'{data["tenants"] - 1} share the rest ("typical"); statuses '
        + ", ".join(f"{k} {v:.0%}" for k, v in data["status_mix"].items())
        + ". Bulk-loaded with `INSERT … SELECT generate_series`, then VACUUM ANALYZE. "
        "Requests one at a time through the API, limit 100, with `total`.",
        "",
        "| tenant | filters | page | total | p50 ms | p99 ms | repository ms | indexes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in listing["cases"]:
        filters = ", ".join(f"{k}={v}" for k, v in case["filters"].items()) or NONE
        lines.append(
            f"| {case['tenant']} | {filters} | {case['page']} | {_f(case['total'])} | "
            f"{_f(case['latency_ms']['p50'], 1)} | {_f(case['latency_ms']['p99'], 1)} | "
            f"{_f(case['repository_ms_p50'], 1)} | {', '.join(case['indexes'])} |"
        )
    lines += [
        "",
        "## Peak memory (RSS, sampled every 0.2 s, children included)",
        "",
        "A tree's RSS is summed over its processes, so pages they share (a prefork pool's, "
        "PostgreSQL's shared buffers in each backend of the bench database) count once per "
        "process.",
        "",
        "| processes | peak RSS of the tree MiB | largest single process MiB |",
        "|---|---|---|",
    ]
    for group, peak in results["memory"]["peak_rss"].items():
        lines.append(
            f"| {group} | {_f(peak['tree_mib'], 1)} | {_f(peak['largest_process_mib'], 1)} |"
        )
    lines += _profiles(results.get("profiles"))
    lines += ["", "## Targets of this round", "", "| target | wanted | measured | met |"]
    lines.append("|---|---|---|---|")
    for name, check in results["targets"].items():
        lines.append(
            f"| {name} | {check['target']} | {check['value']} | {'yes' if check['met'] else 'no'} |"
        )
    lines.append("")
    return "\n".join(lines)
