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

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    sync_playwright,
)

from tests.support.processes import BIN, Proc, free_port, settings_env
from tests.support.queues import drop_queues
from tests.support.services import make_settings
from tests.support.tokens import TokenFactory, make_token
from tests.support.workers import WORKER_SETTINGS
from tests.ui.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    WAIT_MS,
    WORKER_MODULES,
    Stack,
    Watch,
    saved_screenshots,
)

STACK_SETTINGS: dict[str, Any] = {**WORKER_SETTINGS, "webhook_allow_networks": "127.0.0.1/32"}
"""The worker suites' settings, and webhook endpoints allowed at 127.0.0.1 (the Endpoints
page's tests make some there; their module has no worker, so nothing is sent to them)."""


@pytest.fixture(scope="package")
def stack(database_url: str) -> Iterator[Stack]:
    """``eventbus api`` and ``eventbus worker`` subprocesses over the run's database."""
    settings = make_settings(database_url, **STACK_SETTINGS)
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
        drop_queues(settings.queue_prefix)


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


@pytest.fixture
def mint() -> TokenFactory:
    """``mint(tenant, permissions=["manage:system"], admin=False, sub="operator")``."""
    return functools.partial(make_token, sub="operator")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if saved_screenshots:
        terminalreporter.section("ui screenshots")
        for path in saved_screenshots:
            terminalreporter.write_line(str(path))
