"""Reading Prometheus text the way a scrape does, waits, and ``eventbus`` subprocesses."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bus.settings import Settings
from tests.procs import Proc, wait_for

__all__ = ["Proc", "Samples", "eventbus", "eventbus_env", "has", "parse", "value", "wait_for"]

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def has(samples: Samples, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= ls for n, ls in samples)


def eventbus_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an ``eventbus`` subprocess: every EVENTBUS_* from ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTBUS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    for name in Settings.model_fields:
        setting = getattr(settings, name)
        env[f"EVENTBUS_{name.upper()}"] = (
            setting.value if isinstance(setting, Enum) else str(setting)
        )
    env["EVENTBUS_LOG_FORMAT"] = "json"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def eventbus(*args: str) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "eventbus"), *args]
