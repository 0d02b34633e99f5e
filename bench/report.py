"""The headline, the round's targets, and ``results.md`` (the README's Performance table)."""

from __future__ import annotations

from typing import Any

TARGET_E2E_RATIO = 1.0
TARGET_BATCHED_RATIO = 5.0
TARGET_PGQ_RATIO = 1.0
TARGET_FIXED_P99_MS = 100.0
TARGET_PUBLISH_RPS = 1500.0
TARGET_PUBLISH_P99_MS = 100.0
TARGET_LIST_P99_MS = 20.0
TARGET_PG_CPU_MS = 0.07
"""PostgreSQL CPU per event, batched: half of the 0.14 ms before the in-flight set (issue 19)."""
TARGET_WEBHOOK_RATE = 2000.0
"""Webhook deliveries a second to a fast receiver (issue 22)."""
NONE = "-"
CPU_GROUPS = (
    "loadgen",
    "api",
    "relay",
    "bus_workers",
    "postgres",
    "redis",
    "bare_celery_publisher",
    "bare_celery_workers",
    "pgqueuer_enqueuer",
    "pgqueuer_workers",
    "postgres_pgq",
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The three ratio lines, on the same machine and run, and what the batched run cost
    PostgreSQL: the last lines ``make bench`` prints.

    The bus's single-publish end-to-end rate and its batched one, each over bare Celery's; the
    bus's batched rate over PgQueuer's; PostgreSQL's CPU per event and the index entries per
    completion of the batched run.
    """
    bus = float(results["end_to_end"]["final"]["rate"])
    bare = float(results["bare_celery"]["final"]["rate"])
    ratio = bus / bare if bare > 0 else 0.0
    pgq = float(results["pgqueuer"]["final"]["rate"])
    batched = results["end_to_end_batched"]
    lines = [f"end-to-end: {bus:.0f} events/s = {ratio:.2f} x bare Celery"]
    batched_rate = batched_ratio = pgq_ratio = None
    if batched["available"]:
        batched_rate = float(batched["final"]["rate"])
        batched_ratio = _ratio(batched_rate, bare)
        pgq_ratio = _ratio(batched_rate, pgq)
        lines.append(
            f"end-to-end batched: {batched_rate:.0f} events/s = {batched_ratio:.2f} x bare Celery"
        )
        lines.append(f"vs PgQueuer: {pgq_ratio:.2f} x")
        lines.append(history_line(batched["final"]))
    else:
        lines.append(f"end-to-end batched: not available ({batched['detail'][:120]})")
        lines.append(f"vs PgQueuer: not available (no batched rate; PgQueuer {pgq:.0f} jobs/s)")
    # The scheduler's and webhooks' lines come first: the ratio lines and PostgreSQL's stay the
    # last four.
    lines = scheduler_lines(results) + webhook_lines(results) + lines
    return {
        "bus_rate": bus,
        "bare_rate": bare,
        "ratio": round(ratio, 3),
        "batched_rate": batched_rate,
        "batched_ratio": batched_ratio,
        "pgqueuer_rate": pgq,
        "pgqueuer_ratio": pgq_ratio,
        "line": f"end-to-end: {bus:.0f} events/s = {ratio:.2f} x bare Celery",
        "lines": lines,
    }


def _rerun_note(results: dict[str, Any]) -> list[str]:
    """Said when the scheduler's or the webhooks' phases were measured again alone
    (``--scheduler-only``, ``--webhooks-only``)."""
    notes = []
    rerun = (results.get("scheduler") or {}).get("measured")
    if rerun:
        notes.append(
            f"The fairness, order and broker lines are from `python -m bench --scheduler-only` "
            f"at commit {rerun['commit']}, {rerun['at']} (load average "
            f"{rerun.get('load_average') or 'not recorded'}), on a fresh stack."
        )
    hooks = (results.get("webhooks") or {}).get("measured")
    if hooks:
        notes.append(
            f"The webhooks lines are from `python -m bench --webhooks-only` at commit "
            f"{hooks['commit']}, {hooks['at']} (load average "
            f"{hooks.get('load_average') or 'not recorded'}), on a fresh stack."
        )
    if not notes:
        return []
    return ["", " ".join(notes) + " The other lines are from the full run above."]


def webhook_lines(results: dict[str, Any]) -> list[str]:
    """Issue 22's lines: webhook deliveries a second against a handler's events, and a slow
    endpoint beside a fast one."""
    hooks = results.get("webhooks")
    if not hooks:
        return []
    final, handler = hooks["drain"]["final"], hooks["handler_drain"]
    lines = [
        f"webhooks: {_f(final['rate'])} deliveries/s draining {_f(final['events'])} events to a "
        f"fast receiver ({final['label']}; target >= {_f(TARGET_WEBHOOK_RATE)}) = "
        f"{hooks['vs_handler']:.2f} x the same backlog through a no-op handler "
        f"({_f(handler['rate'])} events/s); the sender alone "
        f"{_f(hooks['sender_alone']['per_second'])}/s"
    ]
    slow = hooks.get("slow_endpoint")
    if slow:
        alone, both, first = slow["alone"], slow["at_once"], slow["slow_first"]
        lines.append(
            f"webhooks, one {slow['slow_delay_s']:.0f} s endpoint: the other tenant's "
            f"{_f(slow['events_per_tenant'])} drained in {both['fast_drain_s']:.2f} s published "
            f"at once, {first['fast_drain_s']:.2f} s published after the slow one's (p99 "
            f"{_f(both['fast_latency_ms']['p99'])}, {_f(first['fast_latency_ms']['p99'])} ms) "
            f"against {alone['fast_drain_s']:.2f} s alone (p99 "
            f"{_f(alone['fast_latency_ms']['p99'])} ms; target: no wait for the slow endpoint)"
        )
    return lines


def _webhook_section(results: dict[str, Any]) -> list[str]:
    """The "Webhook delivery" section of results.md, when the phase ran."""
    hooks = results.get("webhooks")
    if not hooks:
        return []
    final, handler, sender = hooks["drain"]["final"], hooks["handler_drain"], hooks["sender_alone"]
    groups = ("bus_workers", "receiver", "postgres", "redis", "api")
    measured = hooks.get("measured")
    lines = [
        "",
        "## Webhook delivery: a backlog to a fast receiver",
        "",
        *(
            [
                f"Measured alone (`python -m bench --webhooks-only`, {measured.get('mode', 'full')}"
                f" mode) at commit {measured['commit']}, {measured['at']} (load average "
                f"{measured.get('load_average') or 'not recorded'}), on a fresh stack; the other "
                "sections are the full run's.",
                "",
            ]
            if measured
            else []
        ),
        f"{_f(hooks['events'])} events of `{hooks['module']}` (no handler: endpoints only) over "
        f"{hooks['tenants']} tenants, each tenant with one endpoint on the receiver "
        f"({hooks['receiver']}), published through the API in batches of 1,000 while the module "
        "was paused; the workers started and answered a ping, then the module was resumed: from "
        "the resume to the last `processed_at` (written when the answer is recorded). Every event "
        "processed and acknowledged, the receiver counted every request. The handler row drains "
        "the same backlog of the end-to-end module (its no-op handler, no endpoint) the same way "
        "on the same layout; the sender alone is `bench/webhooks_sender.py`'s loop (one "
        f"process's sender, lists of {sender['batch']} requests, each body built and signed) "
        "against the same receiver: the HTTP side's ceiling.",
        "",
        "| what | layout | events | per s (median) | each run | "
        + " | ".join(f"CPU ms/event {g}" for g in groups)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(groups),
    ]
    for what, run in (("webhook deliveries", final), ("no-op handler", handler)):
        per = run.get("cpu_ms_per_event", {})
        lines.append(
            f"| {what} | {run['label']} | {_f(run['events'])} | {_f(run['rate'])} | "
            f"{', '.join(_f(x) for x in run.get('repeats', [run['rate']]))} | "
            + " | ".join(_f(per.get(g), 3) for g in groups)
            + " |"
        )
    lines.append(
        f"| sender alone | one process, no bus | {_f(sender['runs'][0]['deliveries'])} | "
        f"{_f(sender['per_second'])} | "
        f"{', '.join(_f(r['per_second']) for r in sender['runs'])} |" + " |" * len(groups)
    )
    e2e = (results.get("end_to_end") or {}).get("final")
    batched = (results.get("end_to_end_batched") or {}).get("final")
    reference = ""
    if e2e:
        reference = (
            f" For reference, the end-to-end figures above (publishing while draining, a no-op "
            f"handler): {_f(e2e['rate'])} events/s with single publishes"
            + (f", {_f(batched['rate'])} with the batch endpoint" if batched else "")
            + "."
        )
    lines += [
        "",
        f"Webhook deliveries/s = {hooks['vs_handler']:.2f} x the handler's events/s on the same "
        f"backlog, {hooks['of_sender_alone']:.2f} x the sender alone." + reference,
        "",
        f"Cores used meanwhile (the median run): {_cores(final['usage'])}. The workers took "
        f"{final['workers_start_s']} s to start (not in the figure); the first event was "
        f"recorded {final['first_done_after_resume_s']} s after the resume (in the figure).",
    ]
    if hooks["drain"].get("search"):
        lines += ["", "| layout tried | events | deliveries/s |", "|---|---|---|"]
        lines += [
            f"| {r['label']} | {_f(r['events'])} | {_f(r['rate'])} |"
            for r in hooks["drain"]["search"]
        ]
    fixed = hooks.get("fixed_rate")
    if fixed:
        lat = fixed["latency_ms"]
        lines += [
            "",
            f"Latency at a fixed rate: single publishes of one tenant offered open loop at "
            f"{_f(fixed['offered_rate'])} events/s ({_f(fixed['events'])} events, 64 "
            f"connections, {_f(fixed['achieved_publish_rps'])} publishes/s achieved) to running "
            f"workers ({fixed['label']}): publish → delivered (`processed_at - created_at`) "
            f"p50 {_f(lat['p50'], 1)} ms, p90 {_f(lat['p90'], 1)} ms, p99 {_f(lat['p99'], 1)} "
            f"ms, max {_f(lat['max'], 1)} ms."
            + (
                f" A no-op handler at {_f(handler_fixed['offered_rate'])} events/s (the latency "
                f"section above): p50 {_f(handler_fixed['latency_ms']['p50'], 1)} ms, p99 "
                f"{_f(handler_fixed['latency_ms']['p99'], 1)} ms."
                if (handler_fixed := results.get("fixed_rate"))
                else ""
            ),
        ]
    slow = hooks.get("slow_endpoint")
    if slow:
        lines += [
            "",
            f"### One slow endpoint: {slow['slow_delay_s']:.0f} s per answer",
            "",
            f"On running workers ({slow['layout']}): the fast tenant's "
            f"{_f(slow['events_per_tenant'])} events alone; then with the other tenant's "
            f"{_f(slow['events_per_tenant'])}, whose endpoint answers after "
            f"{slow['slow_delay_s']:.0f} s, both published at once, then the slow tenant's "
            "first and the fast tenant's right after (the slow requests in flight when the fast "
            "events come). Drain: from the first `created_at` of the tenant's events to their "
            "last `processed_at`.",
            "",
            "| run | fast tenant drain s | p50 ms | p99 ms | max ms | slow tenant drain s |",
            "|---|---|---|---|---|---|",
        ]
        for run in ("alone", "at_once", "slow_first"):
            part = slow[run]
            lat = part["fast_latency_ms"]
            lines.append(
                f"| {run.replace('_', ' ')} | {part['fast_drain_s']:.2f} | {_f(lat['p50'], 1)} | "
                f"{_f(lat['p99'], 1)} | {_f(lat['max'], 1)} | "
                f"{_f(part.get('slow_drain_s'), 2)} |"
            )
    return lines


def _pgq_fixed_lines(results: dict[str, Any]) -> list[str]:
    """PgQueuer at the bus's fixed rates, in the latency section."""
    found = results.get("pgqueuer_fixed_rate") or {}
    if not found:
        return []
    lines = [
        "",
        "PgQueuer offered the same rates in the same run, the same count of jobs, on the layout "
        "its throughput search chose: one `Queries.enqueue` per job at its due time over 16 "
        "connections; latency from each job's `queued` log row to its `successful` one (both "
        "the database's clock, as the bus's rows). The bus's figure includes its HTTP API; "
        "PgQueuer's enqueuer writes to PostgreSQL directly.",
        "",
        "| rate | events/s | enqueue → done p50 ms | p90 ms | p99 ms | max ms "
        "| sends late p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("fixed_rate", "50%"), ("fixed_rate_quarter", "25%")):
        run = found.get(key)
        if run:
            lat = run["latency_ms"]
            lines.append(
                f"| {label} | {_f(run['offered_rate'])} | {_f(lat['p50'], 1)} | "
                f"{_f(lat['p90'], 1)} | {_f(lat['p99'], 1)} | {_f(lat['max'], 1)} | "
                f"{_f(run['send_lateness_ms']['p99'], 1)} |"
            )
    return lines


def scheduler_lines(results: dict[str, Any]) -> list[str]:
    """Issue 20's lines: latency below saturation, fairness, order, the broker under a backlog."""
    lines = []
    for key, label, target in (
        ("fixed_rate", "50%", 100),
        ("fixed_rate_quarter", "25%", 50),
    ):
        fixed = results.get(key)
        if fixed:
            lat = fixed["latency_ms"]
            peer = results.get("pgqueuer_fixed_rate", {}).get(key)
            if peer:
                p99 = peer["latency_ms"]["p99"]
                vs = (
                    f"PgQueuer at the same rate: p50 {_f(peer['latency_ms']['p50'], 1)} ms "
                    f"p99 {_f(p99, 1)} ms; bus p99 = {lat['p99'] / p99:.2f} x PgQueuer's"
                    if p99
                    else "PgQueuer: no latency"
                )
            else:
                vs = "PgQueuer at the same rate: not measured"
            lines.append(
                f"latency at {label}: p50 {_f(lat['p50'], 1)} ms p99 {_f(lat['p99'], 1)} ms "
                f"at {_f(fixed['offered_rate'])} events/s (target p99 < {target} ms; {vs})"
            )
    sched = results.get("scheduler")
    if not sched:
        return lines
    fair = sched["fairness"]
    b = fair["with_b"]["b_latency_ms"]
    lines.append(
        f"fairness: B p99 {_f(b['p99'], 1)} ms max {_f(b['max'], 1)} ms behind A's "
        f"{_f(fair['backlog'])} (target < 250 ms); A drains at {fair['a_ratio']:.2f} x its rate "
        "alone (target >= 0.9)"
    )
    order = sched["order"]
    chaos = order["chaos"]
    lines.append(
        f"order: {chaos['out_of_order']} completed out of order, lost {chaos['lost']}, completed "
        f"twice {chaos['completed_twice']} (targets 0; {_f(order['events'])} events, "
        f"{order['entities']} entities, 10% failing, a worker SIGKILLed); ordered "
        f"{order['ordered_ratio']:.2f} x unordered (target >= 0.8)"
    )
    broker = sched["broker"]
    lines.append(
        f"broker: {_f(broker['events'])} events waiting with workers stopped: "
        f"{broker['waiting_messages']} messages on the queue, Redis used_memory "
        f"+{broker['redis_used_memory_growth_bytes'] / 1e6:.2f} MB (target: a few MB); drained at "
        f"{_f(broker['drain_rate'])}/s, lost {broker['lost']}"
    )
    return lines


def history_line(run: dict[str, Any]) -> str:
    """What a batched run cost PostgreSQL: CPU per event, and what its completions wrote."""
    cpu = run.get("cpu_ms_per_event", {}).get("postgres")
    writes = run.get("completion_writes", {})
    entries = writes.get("index_entries_per_update")
    hot = writes.get("hot_share")
    return (
        f"batched, PostgreSQL: {_f(cpu, 3)} ms CPU per event (target <= {TARGET_PG_CPU_MS}); "
        f"{_f(entries, 2)} index entries per completion"
        + (f" ({hot:.0%} HOT, {writes['indexes']} indexes)" if hot is not None else "")
    )


def _fixed_row(fixed: dict[str, Any]) -> str:
    latency, http = fixed["latency_ms"], fixed["publish"]
    return (
        f"| {fixed['label'].split('; ')[0]} | {_f(latency['p50'], 1)} | {_f(latency['p90'], 1)} "
        f"| {_f(latency['p99'], 1)} | {_f(latency['max'], 1)} | {_f(http['rps'])} | "
        f"{_f(http['latency_ms']['p50'], 1)} | {_f(http['latency_ms']['p99'], 1)} |"
    )


def _best_publish(results: dict[str, Any], level: str) -> tuple[str, dict[str, Any]]:
    runs = results["publish"]
    key = max(runs, key=lambda k: runs[k]["levels"][level]["rps"])
    return key, runs[key]["levels"][level]


def best_batch_alone(results: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The batch endpoint alone at its fastest (API processes, shape), if it ran."""
    found = [
        (f"{api}, {shape}", level)
        for api, run in results["publish"].items()
        for shape, level in run.get("batch_levels", {}).items()
    ]
    return max(found, key=lambda f: f[1]["events_per_s"]) if found else None


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """This round's targets; reported, never asserted (a shared machine makes them noisy)."""
    head = results["headline"]
    ratio = head["ratio"]
    which, c64 = _best_publish(results, "c64")
    fixed = results["fixed_rate"]
    checks: dict[str, Any] = {
        "end_to_end_ratio": {
            "target": f">= {TARGET_E2E_RATIO} x bare Celery (single publishes, c=64)",
            "value": ratio,
            "met": ratio >= TARGET_E2E_RATIO,
        },
        "end_to_end_batched_ratio": {
            "target": f">= {TARGET_BATCHED_RATIO:.0f} x bare Celery (batch endpoint)",
            "value": head["batched_ratio"]
            if head["batched_ratio"] is not None
            else "not available",
            "met": head["batched_ratio"] is not None
            and head["batched_ratio"] >= TARGET_BATCHED_RATIO,
        },
        "vs_pgqueuer_ratio": {
            "target": f">= {TARGET_PGQ_RATIO} x PgQueuer (bus batched / PgQueuer)",
            "value": head["pgqueuer_ratio"]
            if head["pgqueuer_ratio"] is not None
            else "not available",
            "met": head["pgqueuer_ratio"] is not None
            and head["pgqueuer_ratio"] >= TARGET_PGQ_RATIO,
        },
        "fixed_rate_p99": {
            "target": f"p99 < {TARGET_FIXED_P99_MS:.0f} ms publish -> processed at "
            f"{fixed['fraction']:.0%} of the single-publish end-to-end rate",
            "value": {
                "offered_per_s": fixed["offered_rate"],
                "p50_ms": fixed["latency_ms"]["p50"],
                "p99_ms": fixed["latency_ms"]["p99"],
            },
            "met": fixed["latency_ms"]["p99"] < TARGET_FIXED_P99_MS,
        },
        "publish_c64": {
            "target": f">= {TARGET_PUBLISH_RPS:.0f}/s with p99 < {TARGET_PUBLISH_P99_MS:.0f} ms",
            "value": {"rps": c64["rps"], "p99_ms": c64["latency_ms"]["p99"], "api": which},
            "met": c64["rps"] >= TARGET_PUBLISH_RPS
            and c64["latency_ms"]["p99"] < TARGET_PUBLISH_P99_MS,
        },
    }
    if results["end_to_end_batched"]["available"]:
        final = results["end_to_end_batched"]["final"]
        cpu = final.get("cpu_ms_per_event", {}).get("postgres")
        checks["postgres_cpu_per_event_batched"] = {
            "target": f"<= {TARGET_PG_CPU_MS} ms (half of 0.14 before the in-flight set)",
            "value": cpu,
            "met": cpu is not None and cpu <= TARGET_PG_CPU_MS,
        }
        checks["index_entries_per_completion"] = {
            "target": "reported: 9 before the in-flight set (11 indexes, status in them)",
            "value": final.get("completion_writes"),
            "met": None,
        }
    hooks = results.get("webhooks")
    if hooks:
        final = hooks["drain"]["final"]
        checks["webhook_deliveries"] = {
            "target": f">= {TARGET_WEBHOOK_RATE:,.0f} deliveries/s (a backlog to a fast receiver, "
            "one endpoint per event)",
            "value": {
                "per_s": final["rate"],
                "layout": final["label"],
                "vs_handler": hooks["vs_handler"],
                "sender_alone_per_s": hooks["sender_alone"]["per_second"],
            },
            "met": final["rate"] >= TARGET_WEBHOOK_RATE,
        }
        slow = hooks.get("slow_endpoint")
        if slow:
            checks["webhook_slow_endpoint"] = {
                "target": f"a {slow['slow_delay_s']:.0f} s endpoint does not hold another "
                f"tenant's deliveries (its drain < {slow['slow_delay_s']:.0f} s)",
                "value": {
                    "alone_s": slow["alone"]["fast_drain_s"],
                    "at_once_s": slow["at_once"]["fast_drain_s"],
                    "slow_first_s": slow["slow_first"]["fast_drain_s"],
                },
                "met": not slow["fast_waited_for_slow"],
            }
    alone = best_batch_alone(results)
    checks["batch_endpoint_alone"] = {
        "target": "reported (no target): events/s, batch endpoint without workers",
        "value": {"events_per_s": alone[1]["events_per_s"], "at": alone[0]}
        if alone
        else "not available",
        "met": None,
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
        "The machine is shared with other people's work (load average "
        f"{machine['load_average_at_start'][0]} at start, "
        f"{(meta.get('load_average_at_end') or ['?'])[0]} at end): figures are noisy. Each final "
        f"figure is the median of {meta['plan'].get('final_repeats', 1)} run(s) (every run is "
        "listed); every side ran in the same run, against the same PostgreSQL server and the "
        "same Redis.",
        "",
        _bus_settings(meta),
        "",
        *[f"**{line}**  " for line in results["headline"]["lines"]],
        *_rerun_note(results),
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
    probe = next(iter(results["publish"].values()))["batch_endpoint"]
    lines += [
        "",
        "### The batch endpoint alone: `POST /system/events/batch`",
        "",
    ]
    if not probe["available"]:
        lines.append(f"Not available: {probe['detail']}")
    else:
        lines += [
            "| API processes | batch x connections | events/s | requests/s | p50 ms per request | "
            "p99 ms per request | API cores | PostgreSQL cores | rest of machine | errors |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in results["publish"].values():
            for level in run.get("batch_levels", {}).values():
                cores = level["usage"]["cpu_cores"]
                lines.append(
                    f"| {run['api_workers']} | {level['batch']} x {level['concurrency']} | "
                    f"{_f(level['events_per_s'])} | {_f(level['rps'])} | "
                    f"{_f(level['latency_ms']['p50'], 1)} | {_f(level['latency_ms']['p99'], 1)} | "
                    f"{_f(cores.get('api'), 2)} | {_f(cores.get('postgres'), 2)} | "
                    f"{_f(level['usage']['other_cores'], 2)} | "
                    f"{level['errors'] + level['requests'] - level['ok']} |"
                )
    e2e = results["end_to_end"]["final"]
    bare = results["bare_celery"]["final"]
    batched = results["end_to_end_batched"]
    bfinal = batched.get("final")
    pgq = results["pgqueuer"]["final"]
    fixed = results["fixed_rate"]

    def row(side: str, r: dict[str, Any], events: int) -> str:
        return (
            f"| {side} | {r['label']} | {_f(events)} | {_f(r['rate'])} | "
            f"{', '.join(_f(x) for x in r.get('repeats', [r['rate']]))} | "
            f"{_f(r.get('latency_ms', {}).get('p50'))} | {_f(r.get('latency_ms', {}).get('p99'))} |"
        )

    lines += [
        "",
        "## End to end: no-op handler, first send to last done",
        "",
        "| side | configuration | events | events/s (median) | each run | "
        "send → done p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
        row("eventbus, single publishes" + _events_note(meta), e2e, e2e["events"]),
        row("bare Celery", bare, bare["tasks"]),
    ]
    if bfinal:
        lines.append(row("eventbus, batch endpoint" + _events_note(meta), bfinal, bfinal["events"]))
    else:
        lines.append(f"| eventbus, batch endpoint | not available: {batched['detail']} | | | | | |")
    lines += [
        row("PgQueuer", pgq, pgq["tasks"]),
        "",
        "eventbus: from the first `POST` to the last `processed_at`, events published by the "
        "load generator; latency from each row's `created_at` to its `processed_at`. This is "
        "throughput under a backlog (publishing outruns the workers), so its latency is mostly "
        "queueing: the fixed-rate section below is the latency figure. Bare Celery: "
        "`apply_async` from one publisher process, from the first send until a Redis counter "
        "the task INCRs reached N. PgQueuer "
        f"{meta['versions'].get('pgqueuer', '')}: its own database on the same PostgreSQL, "
        "installed with `pgq install` (durable: logged tables, as the bus's); `Queries.enqueue` "
        "batches (one UNNEST `INSERT` each) from an enqueuer process, drained by its "
        "`QueueManager`s (asyncpg, uvloop, its defaults otherwise), from the first enqueue to "
        "the last `successful` row of `pgqueuer_log`; latency from each job's `queued` log row "
        "to its `successful` one. The same publish body is each PgQueuer job's payload.",
        "",
        f"Ratios: single publishes {results['headline']['ratio']:.2f} x bare Celery"
        + (
            f"; batched {results['headline']['batched_ratio']:.2f} x bare Celery and "
            f"{results['headline']['pgqueuer_ratio']:.2f} x PgQueuer."
            if bfinal
            else "; batched: not available."
        ),
        "",
        "Cores used meanwhile: eventbus single "
        + _cores(e2e["usage"])
        + "; bare Celery "
        + _cores(bare["usage"])
        + ("; eventbus batched " + _cores(bfinal["usage"]) if bfinal else "")
        + "; PgQueuer "
        + _cores(pgq["usage"])
        + ".",
        "",
        f"eventbus single publishing ran at {_f(e2e['publish']['rps'])}/s (p99 "
        f"{_f(e2e['publish']['latency_ms']['p99'])} ms); when it ended "
        f"{_f(e2e.get('backlog_when_publishing_ended'))} events were still to process, "
        f"drained at {_f(e2e.get('drain_rate_after_publishing'))}/s by the workers alone.",
    ]
    if bfinal:
        lines += [
            "",
            f"eventbus batched publishing ran at {_f(bfinal['publish']['events_per_s'])} "
            f"events/s ({_f(bfinal['publish']['rps'])} requests/s, p99 "
            f"{_f(bfinal['publish']['latency_ms']['p99'])} ms per request); when it ended "
            f"{_f(bfinal.get('backlog_when_publishing_ended'))} events were still to process, "
            f"drained at {_f(bfinal.get('drain_rate_after_publishing'))}/s. PgQueuer enqueued "
            f"at {_f(pgq.get('enqueue_rate'))} jobs/s.",
        ]
    lines += [
        "",
        "### CPU per event (ms of CPU per event, each process group, over the phase)",
        "",
        "A phase's CPU includes starting its load generator, publisher or enqueuer process.",
        "",
        "| side | " + " | ".join(CPU_GROUPS) + " |",
        "|---|" + "---|" * len(CPU_GROUPS),
    ]
    cpu_rows = [("eventbus single", e2e), ("bare Celery", bare)]
    cpu_rows += [("eventbus batched", bfinal)] if bfinal else []
    cpu_rows += [("PgQueuer", pgq), ("eventbus fixed rate", fixed)]
    for side, r in cpu_rows:
        per = r.get("cpu_ms_per_event", {})
        lines.append(f"| {side} | " + " | ".join(_f(per.get(g), 3) for g in CPU_GROUPS) + " |")
    lines += [
        "",
        f"## Latency at a fixed offered rate: {_f(fixed['offered_rate'])} events/s",
        "",
        f"{fixed['fraction']:.0%} of the single-publish end-to-end rate above, offered open loop "
        f"(request *i* due at start + i / rate, {fixed['publish_concurrency']} connections) for "
        f"{_f(fixed['events'])} events, on the fastest single-publish layout "
        f"({fixed['label'].split('; ')[0]}), right after its last final run; then the same "
        "rate on the solo layout (after a short warm-up run on its processes), which the "
        "fastest one need not be for latency.",
        "",
        "| layout | publish → processed p50 ms | p90 ms | p99 ms | max ms | "
        "achieved publishes/s | HTTP p50 ms | HTTP p99 ms |",
        "|---|---|---|---|---|---|---|---|",
        *(_fixed_row(run) for run in (fixed, *fixed.get("other_layouts", []))),
        "",
        "From the rows: each event's `processed_at - created_at` (both the database's clock). "
        "The rate is half the single-publish *end-to-end* rate, not half the publish-alone "
        f"rate ({_f(_best_publish(results, 'c64')[1]['rps'])}/s at c=64): the publish path "
        "alone can outrun the workers, and latency measured while a backlog grows says "
        "nothing but the backlog.",
        *_pgq_fixed_lines(results),
        "",
        "Layouts tried (at the search size, the fastest then measured at the full N):",
        "",
        "| side | configuration | events | events/s |",
        "|---|---|---|---|",
    ]
    for side, key in (
        ("bare Celery", "bare_celery"),
        ("eventbus single", "end_to_end"),
        ("eventbus batched", "end_to_end_batched"),
        ("PgQueuer", "pgqueuer"),
    ):
        for tried in results[key].get("search", []):
            count = tried.get("tasks", tried.get("events"))
            lines.append(f"| {side} | {tried['label']} | {_f(count)} | {_f(tried['rate'])} |")
    lines += _webhook_section(results)
    listing = results["listing"]
    data = listing["data"]
    lines += [
        "",
        f"## Listing: {data['rows']:,} rows, {data['tenants']} tenants, {data['modules']} "
        "modules, 3 statuses",
        "",
        *(
            [
                f"Re-run alone (`python -m bench --listing-only`) at {rerun['at']}, commit "
                f"{rerun['commit']}; the other sections are the full run's.",
                "",
            ]
            if (rerun := results["meta"].get("listing_rerun"))
            else []
        ),
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
            f"| {name} | {check['target']} | {check['value']} | "
            f"{NONE if check['met'] is None else 'yes' if check['met'] else 'no'} |"
        )
    lines.append("")
    return "\n".join(lines)
