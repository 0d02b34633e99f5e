"""deploy/k8s: every manifest parses and (built-in kinds) validates against the Kubernetes
schemas; container args parse with the real CLI; KEDA counts each module's ready events (its query
runs on a migrated database);
the kustomization and the folder agree; the rendered output (kubectl kustomize) is consistent."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import (
    CONTRACT_VARIABLES,
    DUMMY_SECRET,
    K8S,
    MODULES,
    ROOT,
    load_docs,
    parse_cli,
    parse_env_file,
    setting_names,
    settings_from,
)

KUBERNETES_VERSION = "1.30"  # oldest version the manifests are checked against
CRD_GROUPS = ("keda.sh/",)
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRETS_EXAMPLE = K8S / "secrets.env.example"


def _kustomization() -> dict[str, Any]:
    (doc,) = load_docs(KUSTOMIZATION)
    return doc


def _manifest_files() -> list[Path]:
    return [K8S / name for name in _kustomization()["resources"]]


def _objects() -> list[dict[str, Any]]:
    return [doc for path in _manifest_files() for doc in load_docs(path)]


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in _objects() if o["kind"] == kind}


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in _objects():
        if obj["kind"] in {"Deployment", "Job"}:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{owner}/{c['name']}", c) for owner, spec in _pod_specs() for c in spec["containers"]]


def _configmap() -> dict[str, str]:
    return {str(k): str(v) for k, v in _of_kind("ConfigMap")["eventbus-config"]["data"].items()}


def _secret_generator() -> dict[str, Any]:
    (generator,) = _kustomization()["secretGenerator"]
    return generator


def _worker(module: str) -> dict[str, Any]:
    return _of_kind("Deployment")[f"eventbus-worker-{module}"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the folder and the kustomization --------------------------------------------------------


def test_every_yaml_document_parses() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        docs = load_docs(path)
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert isinstance(doc, dict), path.name


def test_kustomization_lists_exactly_the_manifests_in_the_folder() -> None:
    kustomization = _kustomization()
    listed = list(kustomization["resources"])
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    configurations = set(kustomization.get("configurations", []))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {KUSTOMIZATION.name} - configurations
    assert set(listed) == on_disk, (
        f"listed, not on disk: {sorted(set(listed) - on_disk)}; "
        f"on disk, not listed: {sorted(on_disk - set(listed))}"
    )
    assert not list(K8S.glob("*.yml")), "use the .yaml extension"
    for name in configurations:
        assert (K8S / name).is_file()
    for obj in _objects():
        assert {"apiVersion", "kind", "metadata"} <= set(obj), obj
        assert obj["metadata"].get("name")


def test_secret_values_come_from_a_gitignored_env_file() -> None:
    generator = _secret_generator()
    assert generator["name"] == "eventbus-secrets"
    (env_file,) = generator["envs"]
    assert (K8S / env_file).name == "secrets.env"
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", str(K8S / env_file)],
        cwd=ROOT,
        check=False,
    )
    assert ignored.returncode == 0, f"deploy/k8s/{env_file} must be gitignored"
    assert not _of_kind("Secret"), "no Secret manifest: it is generated"
    example = parse_env_file(SECRETS_EXAMPLE)
    for key, value in example.items():
        assert "REPLACE_ME" in value, f"{key}: placeholder must say REPLACE_ME"


def test_example_secrets_would_be_refused_in_production() -> None:
    example = parse_env_file(SECRETS_EXAMPLE)
    env = {**_configmap(), **{k: v for k, v in example.items() if k.startswith("EVENTBUS_")}}
    with pytest.raises(ValueError, match="EVENTBUS_JWT_SECRET"), settings_from(env):
        pass


def test_configmap_and_secret_keys_make_valid_production_settings() -> None:
    configmap = _configmap()
    example = parse_env_file(SECRETS_EXAMPLE)
    unknown = {k for k in {**configmap, **example} if k.startswith("EVENTBUS_")} - setting_names()
    assert unknown <= CONTRACT_VARIABLES, f"not settings: {sorted(unknown)}"
    assert not set(configmap) & set(example), "a key is both in the ConfigMap and the Secret"
    for key in configmap:
        assert not any(w in key for w in ("SECRET", "PASSWORD", "URL")), (
            f"{key} belongs in the Secret"
        )
    env = {**configmap, **{k: v for k, v in example.items() if k.startswith("EVENTBUS_")}}
    env["EVENTBUS_JWT_SECRET"] = DUMMY_SECRET
    with settings_from(env) as settings:
        assert settings.env.value == "production"
        assert settings.broker_url.startswith("redis://")


# --- schemas ---------------------------------------------------------------------------------


def test_builtin_kinds_validate_against_the_kubernetes_schemas() -> None:
    checked = 0
    for path in _manifest_files():
        for obj in load_docs(path):
            if obj["apiVersion"].startswith(CRD_GROUPS):
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name} {obj['kind']}/{obj['metadata']['name']}: {exc}")
            checked += 1
    assert checked >= 10


# --- workloads -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eventbus-migrate", "eventbus-api", "eventbus-relay"])
def test_container_args_parse_with_the_real_cli(name: str) -> None:
    objects = {**_of_kind("Deployment"), **_of_kind("Job")}
    (container,) = objects[name]["spec"]["template"]["spec"]["containers"]
    assert "command" not in container, "keep the image's ENTRYPOINT (eventbus)"
    args = parse_cli(container["args"])
    if name == "eventbus-api":
        (port,) = container["ports"]
        assert (args.host, args.port) == ("0.0.0.0", port["containerPort"])


@pytest.mark.parametrize("module", MODULES)
def test_worker_args_parse_with_the_real_cli(module: str) -> None:
    (container,) = _worker(module)["spec"]["template"]["spec"]["containers"]
    assert "command" not in container
    assert container["args"][container["args"].index("--modules") + 1] == module
    args = parse_cli(container["args"])
    assert module in str(args.modules)


def test_every_workload_has_the_image_config_and_secret() -> None:
    images = {i["name"] for i in _kustomization()["images"]}
    for owner, container in _containers():
        assert container["image"] in images, f"{owner}: image not rewritten by kustomize images:"
        refs = {next(iter(ref)): next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"configMapRef": "eventbus-config", "secretRef": "eventbus-secrets"}, owner
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], owner
        assert resources["limits"]["memory"], owner


def test_pods_run_non_root_read_only_with_a_writable_tmp() -> None:
    for owner, spec in _pod_specs():
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, owner
        assert security["runAsUser"] == 10001, owner  # the image's USER
        assert security["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert spec["automountServiceAccountToken"] is False, owner
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, owner
            assert ctx["readOnlyRootFilesystem"] is True, owner
            assert ctx["capabilities"]["drop"] == ["ALL"], owner
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            # The only writable path: prometheus_client's multiprocess files live under it.
            scratch = "/tmp"  # noqa: S108 - a path inside the container, not a temp file here
            assert "emptyDir" in volumes[mounts[scratch]], owner


def test_api_probes_and_service() -> None:
    api = _of_kind("Deployment")["eventbus-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["spec"]["replicas"] >= 2
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    service = _of_kind("Service")["eventbus-api"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]


@pytest.mark.parametrize("module", MODULES)
def test_worker_deployment_metrics_port_and_graceful_stop(module: str) -> None:
    worker = _worker(module)
    spec = worker["spec"]
    assert "replicas" not in spec, "KEDA owns the replica count"
    labels = spec["template"]["metadata"]["labels"]
    assert labels["eventbus/module"] == module
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": int(_configmap()["EVENTBUS_METRICS_PORT"])}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(_configmap()["EVENTBUS_TASK_TIME_LIMIT_SECONDS"])


def test_selectors_services_and_disruption_budgets() -> None:
    deployments = _of_kind("Deployment")
    pods = {}
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _selects(selector, labels), f"{name}: selector does not match its pods"
        pods[name] = (labels, deployment["spec"]["template"]["spec"]["containers"])
    budgets = _of_kind("PodDisruptionBudget")
    for name, (labels, _) in pods.items():
        matching = [
            b for b in budgets.values() if _selects(b["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(matching) == 1, f"{name}: needs exactly one PodDisruptionBudget"
        assert "maxUnavailable" in matching[0]["spec"], f"{name}: minAvailable can block drains"
    for name, service in _of_kind("Service").items():
        selected = [
            d for d, (labels, _) in pods.items() if _selects(service["spec"]["selector"], labels)
        ]
        assert selected, f"Service {name} selects no pods"
        for d in selected:
            port_names = {p["name"] for c in pods[d][1] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in port_names, f"{name} -> {d}: {port['targetPort']}"
    metrics = _of_kind("Service")["eventbus-worker-metrics"]
    assert metrics["spec"]["clusterIP"] == "None"
    assert {f"eventbus-worker-{m}" for m in MODULES} <= {
        d for d, (labels, _) in pods.items() if _selects(metrics["spec"]["selector"], labels)
    }


# --- KEDA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_scaled_object_counts_the_ready_events_of_its_module(module: str) -> None:
    scaled = _of_kind("ScaledObject")[f"eventbus-worker-{module}"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == _worker(module)["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] >= 1, "a worker also polls for retries coming due"
    assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql"
    metadata = trigger["metadata"]
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata values are strings"
    assert f"target_module = '{module}'" in metadata["query"]
    assert int(metadata["targetQueryValue"]) > 0
    assert not {"connection", "password", "host"} & set(metadata), "use the TriggerAuthentication"
    auth = _of_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert auth["apiVersion"] == "keda.sh/v1alpha1"


def test_trigger_authentication_reads_the_generated_secret() -> None:
    example = parse_env_file(SECRETS_EXAMPLE)
    (auth,) = _of_kind("TriggerAuthentication").values()
    refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} == {"connection"}
    for ref in refs:
        assert ref["name"] == _secret_generator()["name"]
        assert ref["key"] in example, f"{ref['key']} missing from secrets.env.example"
        assert example[ref["key"]].startswith("postgresql://"), "KEDA's pgx takes a libpq URL"
    # kustomize must rewrite the hashed Secret name inside the TriggerAuthentication too.
    (config_file,) = _kustomization()["configurations"]
    (config,) = load_docs(K8S / config_file)
    specs = [
        spec
        for ref in config["nameReference"]
        if ref["kind"] == "Secret"
        for spec in ref["fieldSpecs"]
        if spec["kind"] == "TriggerAuthentication"
    ]
    assert specs == [
        {"group": "keda.sh", "kind": "TriggerAuthentication", "path": "spec/secretTargetRef/name"}
    ]


def test_the_scaled_objects_query_counts_ready_events_on_the_real_schema(runtime: Any) -> None:
    """The warehouse ScaledObject's query, run on a migrated database: pending events and
    failed ones whose retry is due count; processed, failed for good and not yet due do not,
    nor other modules'."""
    from datetime import timedelta

    from sqlalchemy import text

    from bus.events.rules import utcnow
    from bus.storage.models import EventStatus
    from tests.support.factories import insert_events

    now = utcnow()
    insert_events(runtime, 3)
    insert_events(runtime, 1, status=EventStatus.PROCESSED, processed_at=now)
    insert_events(runtime, 1, status=EventStatus.FAILED, next_attempt_at=None)
    due = now - timedelta(seconds=1)
    insert_events(runtime, 2, status=EventStatus.FAILED, retry_count=1, next_attempt_at=due)
    later = now + timedelta(minutes=5)
    insert_events(runtime, 1, status=EventStatus.FAILED, retry_count=1, next_attempt_at=later)
    insert_events(runtime, 4, target_module="notifications")
    query = _of_kind("ScaledObject")["eventbus-worker-warehouse"]["spec"]["triggers"][0]
    with runtime.engine.connect() as conn:
        assert conn.execute(text(query["metadata"]["query"])).scalar_one() == 5


# --- the rendered output ---------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed"
)
def test_kubectl_kustomize_renders_a_consistent_set(tmp_path: Path) -> None:
    for path in K8S.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    shutil.copy(SECRETS_EXAMPLE, tmp_path / "secrets.env")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    secret_name = secret["metadata"]["name"]
    assert secret_name.startswith("eventbus-secrets-"), "name hash suffix"
    assert set(secret["data"]) == set(parse_env_file(SECRETS_EXAMPLE))
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "eventbus", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "eventbus"
        if obj["kind"] in {"Deployment", "Job"}:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                assert container["image"].endswith(
                    "/eventbus:" + _kustomization()["images"][0]["newTag"]
                )
                assert {"secretRef": {"name": secret_name}} in container["envFrom"]
        if obj["kind"] == "TriggerAuthentication":
            assert {r["name"] for r in obj["spec"]["secretTargetRef"]} == {secret_name}
