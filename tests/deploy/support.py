"""Shared helpers of the deployment tests: file loading, the real CLI parser, settings, globbing."""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.settings import Settings
from eventbus.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus"

# The example modules of issue 5: one worker service / Deployment / ScaledObject each.
MODULES = ("warehouse", "notifications")

# EVENTBUS_* variables of the issue-5 contract that are read by code being written concurrently
# (worker metrics port, Flower's basic auth) and may not be Settings fields (yet), plus the one
# the image's HEALTHCHECK reads. Anything else named EVENTBUS_* must be a Settings field.
CONTRACT_VARIABLES = {"EVENTBUS_METRICS_PORT", "EVENTBUS_FLOWER_BASIC_AUTH"}
IMAGE_VARIABLES = {"EVENTBUS_HEALTHCHECK_URL"}

SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|BASIC_AUTH|TOKEN|PRIVATE_KEY|CREDENTIAL", re.I)

# A strong stand-in for secrets that tests must supply (never a real one).
DUMMY_SECRET = "x" * 48


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The subcommands the real ``eventbus`` parser has today."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("eventbus.cli.build_parser() has no subcommands")


def parse_cli(args: list[str]) -> argparse.Namespace:
    """Parse a container command with the real parser.

    A subcommand of the issue-5 contract that is not in the parser yet makes the calling test
    xfail, naming it; any other parse error fails the test.
    """
    assert isinstance(args, list), f"command must be a list (exec form), got {args!r}"
    assert args, "empty command"
    assert all(isinstance(a, str) for a in args), f"non-string argument in {args!r}"
    name = args[0]
    if name not in subcommands():
        pytest.xfail(f"`eventbus {name}` is not in eventbus.cli.build_parser() yet")
    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"`eventbus {' '.join(args)}` does not parse (argparse exit {exc.code})")


def setting_names() -> set[str]:
    return {f"EVENTBUS_{field.upper()}" for field in Settings.model_fields}


@contextmanager
def settings_from(env: Mapping[str, str]) -> Iterator[Settings]:
    """``Settings()`` as a process would build it with exactly ``env`` as its EVENTBUS_* vars."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("EVENTBUS_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(env)
        yield Settings()
    finally:
        for key in [k for k in os.environ if k.startswith("EVENTBUS_")]:
            del os.environ[key]
        os.environ.update(saved)


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize's secretGenerator ``envs`` reads them (no quoting)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        assert key == key.strip() and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"bad key {key!r}"
        values[key] = value
    return values


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex on a relative path."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_excludes(path: str, lines: list[str]) -> bool:
    """Whether the build context leaves ``path`` out: last matching rule wins, and a rule on a
    directory applies to everything under it (Docker's semantics)."""
    rules = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _glob_to_regex(pattern)))
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded
