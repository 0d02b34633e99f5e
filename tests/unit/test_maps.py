"""The maps cannot rot: every dotted name the README's architecture section, the package map
(``bus/__init__.py``) and the docstrings of the code cite exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bus", "api", "workers", "eventbus")
# `bus.x.y`, ``bus.x.y``, :func:`bus.x.y` (a call's parentheses are not part of the name)
CITED = re.compile(r"`+(?:~)?((?:bus|api|workers|eventbus)(?:\.[A-Za-z_]\w*)+)(?:\([^`]*\))?`+")

NOT_PYTHON = {
    "eventbus.process_events",  # the Celery task's name
    "eventbus.process_event",  # the task of releases before batches (still accepted)
    "eventbus.handlers",  # the entry-point group handler packages register under
    "eventbus.relay",  # a span name
}


def _architecture() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Architecture\n")
    return readme[start : readme.index("\n## ", start + 1)]


def _docstrings() -> list[tuple[str, str]]:
    texts = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                ):
                    doc = ast.get_docstring(node)
                    if doc:
                        texts.append((str(path.relative_to(ROOT)), doc))
    return texts


def _cited() -> list[tuple[str, str]]:
    sources = [("README.md#architecture", _architecture()), *_docstrings()]
    found = {
        (name, where)
        for where, text in sources
        for name in CITED.findall(text)
        if name not in NOT_PYTHON
    }
    return sorted(found)


def _resolve(name: str) -> object:
    """The object ``name`` names: the longest importable module, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(name)


def test_the_maps_cite_names() -> None:
    names = {name for name, _ in _cited()}
    assert len(names) > 40, "the extraction found almost nothing: the pattern is broken"
    assert "bus.delivery.attempts.begin_many" in names


@pytest.mark.parametrize(("name", "where"), _cited())
def test_every_cited_name_exists(name: str, where: str) -> None:
    try:
        _resolve(name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{where} cites {name}, which does not exist ({exc})")
