"""How /ui and its assets are served, through the ASGI app (no browser): the headers, the
files, what index.html and the scripts may not hold, and that the package ships them."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

import httpx
import pytest
from fastapi.testclient import TestClient

from api import ui

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted(p for p in ui.DIRECTORY.iterdir() if p.name != "index.html")
REQUIRED_POLICY = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)


def _policy(header: str) -> set[str]:
    return {part.strip() for part in header.split(";") if part.strip()}


def _assert_page_headers(headers: httpx.Headers) -> None:
    policy = headers.get("content-security-policy")
    assert policy is not None
    assert _policy(policy) >= set(REQUIRED_POLICY)
    assert "unsafe" not in policy  # no 'unsafe-inline', no 'unsafe-eval'
    assert headers.get("x-frame-options") == "DENY"
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") == "no-referrer"


def test_the_page_is_served_under_a_strict_policy(client: TestClient) -> None:
    response = client.get("/ui")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    _assert_page_headers(response.headers)
    assert response.headers["cache-control"] == "no-cache"
    assert response.text == (ui.DIRECTORY / "index.html").read_text()


@pytest.mark.parametrize("asset", ASSETS, ids=lambda p: p.name)
def test_each_asset_is_served_with_the_policy_and_an_etag(client: TestClient, asset: Path) -> None:
    response = client.get(f"/ui/assets/{asset.name}")
    assert response.status_code == 200
    assert response.content == asset.read_bytes()
    expected = {".js": "text/javascript", ".css": "text/css"}[asset.suffix]
    assert response.headers["content-type"].split(";")[0] == expected
    _assert_page_headers(response.headers)
    assert response.headers["cache-control"] == "no-cache"
    again = client.get(
        f"/ui/assets/{asset.name}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/ui/",
        "/ui/assets/index.html",
        "/ui/assets/",
        "/ui/assets/missing.js",
        "/ui/assets/../ui.py",
        "/ui/assets/%2e%2e/ui.py",
        "/docs-assets/ui/app.js",
        "/docs-assets/ui/index.html",
    ],
)
def test_nothing_else_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"success": False, "message": "Not Found"}


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def test_index_html_holds_no_inline_script_style_or_foreign_url() -> None:
    markup = _Markup()
    markup.feed((ui.DIRECTORY / "index.html").read_text())
    assert markup.script_text == []
    scripts = [attrs for tag, attrs in markup.tags if tag == "script"]
    assert scripts == [{"type": "module", "src": "ui/assets/app.js"}]
    assert all(tag != "style" for tag, _ in markup.tags)
    for tag, attrs in markup.tags:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], tag
        for name in ("src", "href", "action"):
            value = attrs.get(name) or ""
            assert not re.match(r"^([a-z]+:)?//", value, re.I), (tag, value)
            assert not value.lower().startswith("javascript:"), (tag, value)


# What would turn data into markup or code, or write a style attribute the policy refuses.
FORBIDDEN = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"setAttribute\(\s*[\"']style|\.cssText|DOMParser|createContextualFragment|console\.|"
    r"localStorage|document\.cookie"
)


@pytest.mark.parametrize("script", [p for p in ASSETS if p.suffix == ".js"], ids=lambda p: p.name)
def test_scripts_never_parse_markup_nor_log(script: Path) -> None:
    source = script.read_text()
    assert FORBIDDEN.findall(source) == []
    # Every import is one of the package's own modules.
    for target in re.findall(r'from "([^"]+)"', source):
        assert re.fullmatch(r"\./[a-z]+\.js", target), target
        assert (ui.DIRECTORY / target[2:]).is_file(), target


def test_the_package_ships_every_file_of_the_page() -> None:
    # setuptools globs do not cross "/": the page's directory stays flat, under static/*/*.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api"]
    files = sorted(ui.DIRECTORY.iterdir())
    assert all(f.is_file() for f in files), "api/static/ui must hold no directory"
    for path in files:
        relative = PurePosixPath(path.relative_to(ui.DIRECTORY.parents[1]).as_posix())
        assert any(
            relative.match(p) and len(relative.parts) == len(PurePosixPath(p).parts)
            for p in patterns
        ), relative


def test_the_page_is_not_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/ui", "/docs-assets"))]
