"""What the browser tests share besides fixtures: the live stack's shape, the page watch,
and helpers that publish through the live API, poll an event, and drive the dashboard."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, ViewportSize, expect

from bus.settings import Settings
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.processes import Proc, wait_for
from tests.support.tokens import auth

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
WORKER_MODULES = "warehouse,flaky,ordered"
"""Modules the worker runs (tests/support/handlers.py); ``IDLE_MODULE`` has no worker, so
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
    response = http.post("/system/events", headers=auth(tok), json=body)
    assert response.status_code == 201, response.text
    event: dict[str, Any] = response.json()["event"]
    return event


def detail(http: httpx.Client, tok: str, event_id: str) -> dict[str, Any]:
    response = http.get(f"/system/events/{event_id}", headers=auth(tok))
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
