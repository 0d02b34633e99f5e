"""Driving the load generator from the harness: one process per run of scenarios."""

from __future__ import annotations

import json
import uuid
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
) -> dict[str, Any]:
    return {
        "name": name,
        "method": "POST",
        "path": "/system/events",
        "headers": {"Authorization": f"Bearer {token}"},
        "body": publish_body(target_module, event_type),
        "concurrency": concurrency,
        "duration": duration,
        "count": count,
        "warmup": warmup,
        "expect_status": 201,
        "max_seconds": max_seconds,
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
