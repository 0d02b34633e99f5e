"""deploy/prometheus: the scrape config finds the Services deploy/k8s defines; alert rules use
only the bus's metric names (checked against bus.observability.metrics), with the right suffixes
and labels;
promtool checks and unit-tests the rules when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest

from tests.deploy.support import K8S, PROMETHEUS, load_docs

# name -> (type, labels): the metric contract of issue 5.
METRICS: dict[str, tuple[str, set[str]]] = {
    "eventbus_events_published_total": ("counter", {"target_module", "event_type"}),
    "eventbus_events_processed_total": ("counter", {"target_module", "event_type"}),
    "eventbus_events_failed_total": ("counter", {"target_module", "event_type"}),
    "eventbus_events_retried_total": ("counter", {"target_module", "event_type"}),
    "eventbus_handler_duration_seconds": ("histogram", {"target_module", "event_type"}),
    "eventbus_end_to_end_lag_seconds": ("histogram", {"target_module"}),
    "eventbus_http_request_duration_seconds": ("histogram", {"method", "route", "status"}),
    "eventbus_queue_depth": ("gauge", {"target_module"}),
    "eventbus_oldest_pending_age_seconds": ("gauge", {"target_module"}),
    "eventbus_pending_events": ("gauge", {"target_module"}),
    "eventbus_held_keys": ("gauge", {"target_module"}),
    "eventbus_module_paused": ("gauge", {"target_module"}),
}
# Labels Prometheus or the scrape config add to every series.
TARGET_LABELS = {"job", "instance", "pod", "worker_module"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
SEVERITIES = {"info", "warning", "critical"}


def _alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_docs(PROMETHEUS / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _series_of(expr: str) -> set[str]:
    return set(re.findall(r"\beventbus_[a-z_]+\b", expr))


def _base(series: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in METRICS:
            return series.removesuffix(suffix)
    return series


def test_metric_contract_matches_bus_metrics() -> None:
    """The names and labels the rules rely on are the ones the code defines."""
    from prometheus_client.metrics import MetricWrapperBase

    from bus.observability import metrics

    defined: dict[str, tuple[str, set[str]]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = value._type
            name = value._name + ("_total" if kind == "counter" else "")
            defined[name] = (kind, set(value._labelnames))
    backlog = metrics.BacklogCollector(lambda: [metrics.Backlog("warehouse", 1, 1, 1.0)])
    for family in backlog.collect():
        defined[family.name] = (family.type, {k for s in family.samples for k in s.labels})
    for name, contract in METRICS.items():
        assert name in defined, f"{name} is not defined in bus/observability/metrics.py"
        assert defined[name] == contract, (
            f"{name}: code has {defined[name]}, rules assume {contract}"
        )


def test_scrape_config_finds_the_kubernetes_services() -> None:
    (config,) = load_docs(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS / "alerts.yml").is_file()
    services = {
        o["metadata"]["name"]: o
        for path in K8S.glob("*.yaml")
        for o in load_docs(path)
        if o.get("kind") == "Service"
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"eventbus-api", "eventbus-workers"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["namespaces"]["names"] == ["eventbus"]
        keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        (rule,) = keep
        service, port = rule["regex"].split(";")
        assert service in services, f"{job['job_name']}: no Service {service} in deploy/k8s"
        assert port in {p["name"] for p in services[service]["spec"]["ports"]}


def test_alert_rules_are_complete() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert len(rules) >= 8
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert _series_of(rule["expr"]) or "up{" in rule["expr"], rule["alert"]


def test_alerts_use_only_contract_metrics_correctly() -> None:
    used: set[str] = set()
    for rule in _alert_rules():
        expr = rule["expr"]
        labels_allowed = set(TARGET_LABELS) | {"le"}
        for series in _series_of(expr):
            base = _base(series)
            assert base in METRICS, f"{rule['alert']}: unknown metric {series}"
            kind, labels = METRICS[base]
            labels_allowed |= labels
            used.add(base)
            if kind == "histogram":
                assert series != base, f"{rule['alert']}: a histogram is read through {series}_*"
            if kind == "gauge":
                # Several targets may export the same backlog gauge: max, never sum.
                assert re.search(rf"\bmax\s*(?:by\s*\([^)]*\)\s*)?\(\s*{series}\b", expr), (
                    f"{rule['alert']}: gauge {series} must be aggregated with max by (...)"
                )
            if kind == "counter":
                assert re.search(rf"(rate|increase)\(\s*{series}\b", expr), (
                    f"{rule['alert']}: counter {series} outside rate()/increase()"
                )
        grouped = re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr)
        matched = re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!~|!=|=)", expr)
        for label in {lab.strip() for g in grouped for lab in g.split(",") if lab.strip()} | set(
            matched
        ):
            assert label in labels_allowed, (
                f"{rule['alert']}: label {label} is on none of its metrics"
            )
    assert used == set(METRICS), f"metrics without an alert: {sorted(set(METRICS) - used)}"


def test_api_error_alert_ignores_probe_routes() -> None:
    (rule,) = [r for r in _alert_rules() if r["alert"] == "EventbusApiErrorRatioHigh"]
    assert "/readyz" in rule["expr"], "/readyz answers 503 by design while a dependency is down"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", "alerts.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr
