"""Driving the load generator from the harness: one process per run of scenarios."""

from __future__ import annotations

import http.client
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import SEQ
from bench.monitor import Monitor
from bench.procs import BenchError, Proc, Stack, child_env, python_argv
from bus.auth import mint_token

TOKEN_TTL_SECONDS = 6 * 3600


def system_token(secret: str, tenant: uuid.UUID) -> str:
    """A publishing service's token: system type, one tenant, verified per request (HS256)."""
    return mint_token(
        secret,
        sub="bench-publisher",
        tenant_id=tenant,
        permissions=["manage:system"],
        token_type="system",
        ttl_seconds=TOKEN_TTL_SECONDS,
    )


def reader_token(secret: str, tenant: uuid.UUID) -> str:
    """An operator's token that may list one tenant's events."""
    return mint_token(
        secret,
        sub="bench-reader",
        tenant_id=tenant,
        permissions=["manage:system"],
        ttl_seconds=TOKEN_TTL_SECONDS,
    )


def publish_body(target_module: str, event_type: str) -> str:
    """The seed's publish body, each event about its own entity (``{seq}`` is filled in)."""
    body = {
        "event_type": event_type,
        "source_module": "inventory",
        "target_module": target_module,
        "entity_type": "inventory_item",
        "entity_id": f"item-{SEQ}",
        "event_data": {
            "previous_quantity": 100,
            "new_quantity": 95,
            "warehouse_id": "warehouse-uuid-1",
        },
    }
    return json.dumps(body)


BATCH_PATH = "/system/events/batch"


def batch_body(target_module: str, event_type: str, size: int) -> str:
    """``{"events": [...]}`` of ``size`` publish bodies, each about its own entity."""
    one = publish_body(target_module, event_type)
    items = [one.replace(f'"item-{SEQ}"', f'"item-{SEQ}-{i}"') for i in range(size)]
    return '{"events": [' + ", ".join(items) + "]}"


@dataclass(frozen=True)
class BatchProbe:
    """Whether ``POST /system/events/batch`` exists and answers its contract."""

    available: bool
    status: int | None
    detail: str

    @property
    def absent(self) -> bool:
        """The route is not there at all (404/405): the only "not available" CI accepts."""
        return self.status in (404, 405)


def probe_batch(port: int, token: str, target_module: str, event_type: str) -> BatchProbe:
    """One batch of two events: 201 with both event objects, in order, means available.

    The events go to ``target_module`` (the warm-up module): the caller drops them.
    """
    body = batch_body(target_module, event_type, 2).replace(SEQ, "probe")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "POST",
                BATCH_PATH,
                body=body.encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            status, raw = response.status, response.read()
        finally:
            conn.close()
    except OSError as exc:
        return BatchProbe(False, None, f"{type(exc).__name__}: {exc}")
    text = raw[:300].decode(errors="replace")
    if status != 201:
        return BatchProbe(False, status, f"answered {status}: {text}")
    try:
        events = json.loads(raw)["events"]
        ids = [e["entity_id"] for e in events]
    except (ValueError, KeyError, TypeError):
        return BatchProbe(False, status, f"201 without an events list: {text}")
    if ids != ["item-probe-0", "item-probe-1"]:
        return BatchProbe(False, status, f"201 but events not in input order: {ids}")
    return BatchProbe(True, status, "201 with every event, in input order")


def publish_scenario(
    name: str,
    token: str,
    target_module: str,
    event_type: str,
    *,
    concurrency: int,
    duration: float | None = None,
    count: int | None = None,
    warmup: float = 0.0,
    max_seconds: float = 600.0,
    batch: int = 1,
    rate: float | None = None,
    warmup_count: int = 0,
) -> dict[str, Any]:
    """Single publishes (``batch`` 1) or ``POST /system/events/batch`` of ``batch`` events.

    ``count`` is in requests (after ``warmup_count`` not counted); ``rate`` (requests/s) makes
    the load open-loop at that rate.
    """
    return {
        "name": name,
        "method": "POST",
        "path": "/system/events" if batch == 1 else BATCH_PATH,
        "headers": {"Authorization": f"Bearer {token}"},
        "body": (
            publish_body(target_module, event_type)
            if batch == 1
            else batch_body(target_module, event_type, batch)
        ),
        "concurrency": concurrency,
        "duration": duration,
        "count": count,
        "warmup": warmup,
        "warmup_count": warmup_count,
        "expect_status": 201,
        "max_seconds": max_seconds,
        "rate": rate,
    }


def run_load(
    stack: Stack,
    monitor: Monitor,
    out_dir: Path,
    port: int,
    scenarios: list[dict[str, Any]],
    tag: str,
) -> list[dict[str, Any]]:
    """Run scenarios in a fresh load-generator process and return its results."""
    spec_path = out_dir / f"loadgen-{tag}.spec.json"
    result_path = out_dir / f"loadgen-{tag}.result.json"
    spec_path.write_text(json.dumps({"host": "127.0.0.1", "port": port, "scenarios": scenarios}))
    result_path.unlink(missing_ok=True)
    proc = stack.add(
        Proc(
            f"loadgen-{tag}",
            python_argv("bench.loadgen", str(spec_path), str(result_path)),
            log_dir=out_dir,
            env=child_env({}),
        )
    )
    monitor.watch("loadgen", proc.pid)
    budget = sum(float(s.get("max_seconds", 600.0)) for s in scenarios) + 60
    try:
        proc.popen.wait(budget)
    except Exception as exc:
        raise BenchError(f"load generator {tag} did not finish in {budget:.0f}s") from exc
    finally:
        monitor.unwatch(proc.pid)
        stack.stop(proc)
    if proc.popen.returncode != 0 or not result_path.exists():
        raise BenchError(f"load generator {tag} failed:\n{proc.tail()}")
    results: list[dict[str, Any]] = json.loads(result_path.read_text())
    return results
