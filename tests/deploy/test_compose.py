"""docker-compose.yml: services, commands through the real CLI parser, Redis durability, secrets
without defaults, scalable workers. No Docker engine is needed: the file is parsed and checked."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bus.broker.queues import queue_name
from tests.deploy.support import (
    COMPOSE,
    CONTRACT_VARIABLES,
    DUMMY_SECRET,
    IMAGE_VARIABLES,
    MODULES,
    ROOT,
    SECRET_NAME,
    parse_cli,
    setting_names,
    settings_from,
)

APP_SERVICES = ("migrate", "api", "relay", *(f"worker-{m}" for m in MODULES), "flower")
REQUIRED_SECRETS = (
    "EVENTBUS_JWT_SECRET",
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "EVENTBUS_FLOWER_BASIC_AUTH",
)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {str(k): str(v) for k, v in env.items()}


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} with ``variables`` as the shell."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = variables.get(name, "")
        if op in (":?", "?"):
            if not current:
                raise LookupError(arg)
            return current
        if op in (":-", "-"):
            return current or arg
        return current

    return INTERPOLATION.sub(sub, value)


def test_services_are_the_issue_5_set() -> None:
    assert set(_services()) == {"postgres", "redis", *APP_SERVICES}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_build_from_the_deploy_dockerfile(name: str) -> None:
    service = _services()[name]
    build = service["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert build["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert "entrypoint" not in service, "the image's ENTRYPOINT is `eventbus`"
    assert _env(service)["EVENTBUS_ENV"] == "production"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_commands_parse_with_the_real_cli(name: str) -> None:
    args = parse_cli(_services()[name]["command"])
    if name == "api":
        assert (args.host, args.port) == ("0.0.0.0", 8000)
        ports = _services()["api"]["ports"]
        assert any(str(p).endswith(":8000") for p in ports), ports
    if name.startswith("worker-"):
        assert name.removeprefix("worker-") in str(args.modules)
    if name == "flower":
        # every interface inside the container (its default is loopback), published on the
        # host's loopback only (test_flower_has_basic_auth_and_stays_on_loopback)
        assert (args.port, args.address) == (5555, "0.0.0.0")


@pytest.mark.parametrize("module", MODULES)
def test_one_scalable_worker_service_per_module(module: str) -> None:
    service = _services()[f"worker-{module}"]
    command = service["command"]
    assert command[:1] == ["worker"]
    assert command[command.index("--modules") + 1] == module
    # `docker compose up --scale worker-<module>=N` needs neither a fixed name nor host ports.
    assert "container_name" not in service
    assert "ports" not in service
    assert "hostname" not in service
    env = _env(service)
    assert (
        env["EVENTBUS_HEALTHCHECK_URL"]
        == f"http://127.0.0.1:{env['EVENTBUS_METRICS_PORT']}/metrics"
    )
    # The queue it consumes is the kombu list KEDA watches in Kubernetes.
    assert queue_name(module, "eventbus.") == f"eventbus.{module}"


def test_redis_keeps_queued_messages() -> None:
    redis = _services()["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in {"everysec", "always"}
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_postgres_16_with_volume_and_pg_isready() -> None:
    postgres = _services()["postgres"]
    assert str(postgres["image"]).split(":")[1].startswith("16")
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volumes = _compose()["volumes"]
    for service in ("postgres", "redis"):
        for volume in _services()[service]["volumes"]:
            assert str(volume).split(":")[0] in volumes, (
                f"{service}: {volume} is not a named volume"
            )


def test_migrate_runs_once_before_the_services_that_need_the_schema() -> None:
    services = _services()
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "relay", *(f"worker-{m}" for m in MODULES)):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_secrets_have_no_committed_default() -> None:
    text = COMPOSE.read_text()
    references = INTERPOLATION.findall(text)
    for required in REQUIRED_SECRETS:
        assert any(name == required for name, _, _ in references), f"{required} is never used"
    for name, op, arg in references:
        if SECRET_NAME.search(name):
            assert op == ":?" and arg.strip(), f"${{{name}}} must be ${{{name}:?message}}"
    for service_name, service in _services().items():
        for key, value in _env(service).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.fullmatch(value), f"{service_name}.{key} has a literal value"
            # Credentials inside URLs come from a required variable too.
            split = urlsplit(value) if "://" in value else None
            if split is not None and "@" in split.netloc:
                userinfo = split.netloc.rsplit("@", 1)[0]
                password = userinfo.partition(":")[2]
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", password), (
                    f"{service_name}.{key}: URL password must be ${{VAR:?message}}"
                )


def test_missing_secret_stops_compose_with_a_message() -> None:
    env = _env(_services()["api"])
    with pytest.raises(LookupError, match="EVENTBUS_JWT_SECRET"):
        _interpolate(env["EVENTBUS_JWT_SECRET"], {})


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_builds_valid_production_settings(name: str) -> None:
    shell = dict.fromkeys(REQUIRED_SECRETS, DUMMY_SECRET)
    env = {k: _interpolate(v, shell) for k, v in _env(_services()[name]).items()}
    unknown = {k for k in env if k.startswith("EVENTBUS_")} - setting_names()
    assert unknown <= CONTRACT_VARIABLES | IMAGE_VARIABLES, f"not settings: {unknown}"
    with settings_from({k: v for k, v in env.items() if k.startswith("EVENTBUS_")}) as settings:
        assert settings.env.value == "production"
        assert urlsplit(settings.database_url).hostname == "postgres"
        broker = urlsplit(settings.broker_url)
        assert (broker.scheme, broker.hostname, broker.path) == ("redis", "redis", "/0")
        assert settings.signing_secret() == DUMMY_SECRET


def test_flower_has_basic_auth_and_stays_on_loopback() -> None:
    flower = _services()["flower"]
    assert _env(flower)["EVENTBUS_FLOWER_BASIC_AUTH"].startswith("${EVENTBUS_FLOWER_BASIC_AUTH:?")
    for port in flower["ports"]:
        assert str(port).startswith("127.0.0.1:"), port


def test_relay_and_migrate_do_not_inherit_the_api_healthcheck() -> None:
    services = _services()
    for name in ("relay", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}, name
    flower_url = _env(services["flower"])["EVENTBUS_HEALTHCHECK_URL"]
    assert flower_url == "http://127.0.0.1:5555/healthcheck"
