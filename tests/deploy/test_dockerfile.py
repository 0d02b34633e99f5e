"""deploy/Dockerfile and .dockerignore: slim multi-stage, non-root, `eventbus` entrypoint, a
working HEALTHCHECK one-liner, no secrets, and a build context that holds exactly the sources."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.deploy.support import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    SECRET_NAME,
    dockerignore_excludes,
)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    assert not buffer, "dangling line continuation"
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for word, rest in _instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            defaults[key] = value
    return defaults


def _env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in stage:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def _healthcheck_command() -> list[str]:
    (rest,) = [rest for word, rest in _stages()[-1] if word == "HEALTHCHECK"]
    _, _, command = rest.partition("CMD ")
    parsed = json.loads(command)
    assert isinstance(parsed, list), "HEALTHCHECK CMD in exec form"
    return [str(p) for p in parsed]


def test_multi_stage_on_python_311_slim() -> None:
    defaults = _arg_defaults()
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert image == "python:3.11-slim"
    runtime = stages[-1]
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies, "the runtime stage copies the built venv"
    assert all(c.startswith("--from=") for c in copies), "runtime copies only from the builder"
    builder = stages[0]
    assert any(w == "RUN" and "pip wheel" in r for w, r in builder), "builder builds a wheel"


def test_runs_as_non_root_with_eventbus_entrypoint() -> None:
    runtime = _stages()[-1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert int(user) == 10001, "deploy/k8s runAsUser relies on uid 10001"
    (entrypoint,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["eventbus"]


def test_no_secret_is_baked_in() -> None:
    for word, rest in _instructions():
        if word in {"ENV", "ARG", "LABEL"}:
            for key in re.findall(r"(\w+)=", rest) or [rest.split("=")[0]]:
                assert not SECRET_NAME.search(key), f"{word} {key} bakes a secret into the image"
    env = _env_of(_stages()[-1])
    assert env["EVENTBUS_ENV"] == "production"


def test_every_package_is_copied_into_the_builder() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    sources = set()
    for word, rest in _stages()[0]:
        if word == "COPY" and not rest.startswith("--from"):
            sources.update(rest.split()[:-1])
    assert packages <= sources, f"packages not copied: {packages - sources}"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not dockerignore_excludes(source, DOCKERIGNORE.read_text().splitlines())


@pytest.mark.parametrize(
    "path",
    [
        "bus/settings.py",
        "bus/storage/migrations/versions/0001_system_events.py",
        "bus/storage/migrations/script.py.mako",
        "api/app.py",
        "eventbus/cli.py",
        "pyproject.toml",
        "README.md",
    ],
)
def test_dockerignore_keeps_what_the_build_needs(path: str) -> None:
    assert (ROOT / path).exists()
    assert not dockerignore_excludes(path, DOCKERIGNORE.read_text().splitlines())


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        ".eventbus-secret",
        "eventbus.db",
        ".env",
        "deploy/compose.env",
        "deploy/k8s/secrets.env",
        "tests/conftest.py",
        "bus/__pycache__/settings.cpython-311.pyc",
        ".mypy_cache/3.11/bus/settings.data.json",
    ],
)
def test_dockerignore_keeps_out_secrets_and_local_state(path: str) -> None:
    assert dockerignore_excludes(path, DOCKERIGNORE.read_text().splitlines())


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_healthcheck(url: str) -> int:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    env = {**os.environ, "EVENTBUS_HEALTHCHECK_URL": url}
    return subprocess.run(
        [sys.executable, "-c", command[2]], env=env, capture_output=True, timeout=30, check=False
    ).returncode


def test_healthcheck_one_liner_passes_on_200_and_fails_otherwise() -> None:
    default = _env_of(_stages()[-1])["EVENTBUS_HEALTHCHECK_URL"]
    assert default == "http://127.0.0.1:8000/healthz"
    with _server() as port:
        assert _run_healthcheck(f"http://127.0.0.1:{port}/healthz") == 0
        assert _run_healthcheck(f"http://127.0.0.1:{port}/readyz") != 0
    assert _run_healthcheck(f"http://127.0.0.1:{port}/healthz") != 0  # nobody listening
