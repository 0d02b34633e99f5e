"""The /ui dashboard in a real browser: Playwright driving Debian's Chromium against a live
stack — an ``eventbus api`` (uvicorn) and an ``eventbus worker`` subprocess on the test run's
PostgreSQL database and Redis, with a queue prefix of their own.

The stack starts once for the package (each test works in a tenant of its own, so no test sees
another's events); each test gets a fresh browser context (empty sessionStorage) whose console
errors, page errors and native dialogs are collected and must be none at the end.

Chromium is launched from ``/usr/bin/chromium`` (``EVENTBUS_TEST_CHROMIUM`` to override): a
missing browser fails the tests, it never skips them (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from bus.auth import mint_token
from bus.settings import Settings
from tests.conftest import SEED_PUBLISH_BODY, TEST_SECRET, _drop_queues, make_settings
from tests.integration.conftest import BIN, FAST_RETRIES, HANDLERS, free_port, settings_env
from tests.procs import Proc, wait_for

CHROMIUM = os.environ.get("EVENTBUS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling Google's services, on a network that has none.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
WORKER_MODULES = "warehouse,flaky"
"""Modules the worker runs (tests/integration/handlers.py); ``IDLE_MODULE`` has no worker, so
its events stay pending until a test changes them."""
IDLE_MODULE = "ui-idle"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}
WAIT_MS = 8000
"""Bounded waits in the browser: generous for a shared machine, far below a test's timeout."""

saved_screenshots: list[Path] = []


@dataclass(frozen=True)
class Stack:
    url: str
    settings: Settings
    api: Proc
    worker: Proc


@pytest.fixture(scope="package")
def stack(database_url: str) -> Iterator[Stack]:
    """``eventbus api`` and ``eventbus worker`` subprocesses over the run's database."""
    settings = make_settings(database_url, handlers=HANDLERS, metrics_port=0, **FAST_RETRIES)
    env = settings_env(settings)
    port = free_port()
    started: list[Proc] = []
    try:
        api = Proc([str(BIN / "eventbus"), "api", "--host", "127.0.0.1", "--port", str(port)], env)
        started.append(api)
        worker = Proc(
            [
                *(str(BIN / "eventbus"), "worker", "--modules", WORKER_MODULES),
                *("--pool", "prefork", "--concurrency", "2", "--loglevel", "INFO"),
            ],
            env,
        )
        started.append(worker)
        api.wait_for_output("Application startup complete", 30.0)
        worker.wait_for_line(" ready.", 30.0)
        yield Stack(f"http://127.0.0.1:{port}", settings, api, worker)
    finally:
        for proc in started:
            proc.stop()
        _drop_queues(settings.queue_prefix)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; "
        ".ci/run does it). The browser tests never skip."
    )
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()


@dataclass
class Watch:
    """What a page said that no test expects: console errors, uncaught errors, native
    dialogs (``alert`` from an injected handler, ``confirm``…)."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Console errors matching ``pattern`` are expected by this test (Chromium logs every
        4xx answer to a fetch as "Failed to load resource")."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        console = [e for e in self.console_errors if not any(p.search(e) for p in self.allowed)]
        return (
            console
            + [f"pageerror: {e}" for e in self.page_errors]
            + [f"dialog: {d}" for d in self.dialogs]
        )


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Browser, watch: Watch, stack: Stack) -> Iterator[Page]:
    """A fresh context (its own sessionStorage) at 1280x800, watched; nothing unexpected may
    have been logged when the test ends."""
    context = browser.new_context(viewport=DESKTOP, base_url=stack.url)
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watch.console_errors.append(f"console: {message.text} @ {message.location}")

    def on_dialog(dialog: Dialog) -> None:
        watch.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: watch.page_errors.append(str(error)))
    tab.on("dialog", on_dialog)
    yield tab
    context.close()
    assert watch.unexpected() == [], "the page logged errors or opened a native dialog"


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=10.0) as client:
        yield client


@pytest.fixture
def tenant() -> uuid.UUID:
    """A tenant of the test's own: its views hold only the test's events."""
    return uuid.uuid4()


Minter = Callable[..., str]


@pytest.fixture
def mint() -> Minter:
    """``mint(tenant, permissions=["manage:system"], admin=False, sub="operator")``."""

    def make(
        tenant: uuid.UUID | None,
        permissions: list[str] | None = None,
        *,
        admin: bool = False,
        sub: str = "operator",
    ) -> str:
        return mint_token(
            TEST_SECRET,
            sub=sub,
            tenant_id=tenant,
            permissions=["manage:system"] if permissions is None else permissions,
            is_system_admin=admin,
        )

    return make


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def publish(
    http: httpx.Client,
    tok: str,
    target_module: str = "warehouse",
    *,
    event_type: str = "inventory_updated",
    entity_id: str = "item-1",
    **data: Any,
) -> dict[str, Any]:
    """POST an event through the live API; its data steers the test handler."""
    body = {
        **SEED_PUBLISH_BODY,
        "event_type": event_type,
        "target_module": target_module,
        "entity_id": entity_id,
        "event_data": data,
    }
    response = http.post("/system/events", headers=bearer(tok), json=body)
    assert response.status_code == 201, response.text
    event: dict[str, Any] = response.json()["event"]
    return event


def detail(http: httpx.Client, tok: str, event_id: str) -> dict[str, Any]:
    response = http.get(f"/system/events/{event_id}", headers=bearer(tok))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def wait_detail(
    http: httpx.Client,
    tok: str,
    event_id: str,
    until: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll ``GET /system/events/{id}`` until ``until(answer)``; fail with the last answer."""
    last: list[dict[str, Any]] = []

    def reached() -> bool:
        last[:] = [detail(http, tok, event_id)]
        return until(last[0])

    try:
        wait_for(reached, timeout, f"event {event_id} never {what}", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[0] if last else None}") from None
    return last[0]


def sign_in(page: Page, tok: str, path: str = "/ui") -> None:
    """Open ``path`` and paste the token into the sign-in form."""
    page.goto(path)
    page.get_by_label("Bearer token").fill(tok)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def mark_document(page: Page) -> None:
    """A marker on ``window`` that only a full page load would lose."""
    page.evaluate("window.__uiTestMarker = 'still the same document'")


def same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__uiTestMarker === 'still the same document'"))


def screenshot(page: Page, name: str) -> Path:
    """Save ``tests/ui/screenshots/<name>.png`` (gitignored); listed at the end of the run."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    saved_screenshots.append(path)
    print(f"screenshot: {path}")
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if saved_screenshots:
        terminalreporter.section("ui screenshots")
        for path in saved_screenshots:
            terminalreporter.write_line(str(path))
