"""The dashboard's boundaries in a real browser: tenancy is the API's, data is text, the token
goes with sign-out, the API's refusals are shown as it words them, and a keyboard suffices."""

from __future__ import annotations

import uuid

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from bus.auth import mint_token
from tests.support.tokens import TokenFactory, auth
from tests.ui.browser import (
    IDLE_MODULE,
    Watch,
    publish,
    screenshot,
    sign_in,
)

pytestmark = pytest.mark.ui

HOSTILE_HTML = "<img src=x onerror=alert(1)>"
HOSTILE_SCRIPT = "<script>alert(2)</script>"


def test_a_tenant_token_never_shows_another_tenants_events(
    page: Page, http: httpx.Client, mint: TokenFactory, watch: Watch
) -> None:
    # Given two events in tenant A and two in tenant B
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    tok_a, tok_b = mint(tenant_a), mint(tenant_b)
    ours = [publish(http, tok_a, IDLE_MODULE)["id"] for _ in range(2)]
    theirs = [publish(http, tok_b, IDLE_MODULE)["id"] for _ in range(2)]
    # When A's operator reads the list and the overview
    sign_in(page, tok_a, "/ui?view=events")
    for event_id in ours:
        expect(page.locator(f'tr[data-event-id="{event_id}"]')).to_be_visible()
    # Then B's events are nowhere, nor counted
    content = page.content()
    assert all(event_id not in content for event_id in theirs)
    expect(page.get_by_text("2 events match no filter")).to_be_visible()
    page.get_by_role("link", name="Overview").click()
    total = page.locator('tr.total [data-count="total"]')
    expect(total).to_have_text("2")
    # And B's event by its address is the API's 404, shown as the API words it
    watch.allow(r"status of 404")
    page.goto(f"/ui?view=event&id={theirs[0]}")
    expect(page.get_by_role("alert")).to_have_text("Event not found")
    assert theirs[0] not in page.locator("main").inner_text()


def test_a_system_admin_picks_a_tenant_or_all(
    page: Page, http: httpx.Client, mint: TokenFactory
) -> None:
    # Given an event in each of two tenants, and a system admin's token of no tenant
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    event_a = publish(http, mint(tenant_a), IDLE_MODULE)["id"]
    event_b = publish(http, mint(tenant_b), IDLE_MODULE)["id"]
    sign_in(page, mint(None, [], admin=True, sub="root"), "/ui?view=events")
    expect(page.get_by_text("Signed in as root · system admin")).to_be_visible()
    # When the admin picks tenant B
    page.get_by_label("Tenant (UUID; empty: all)").fill(str(tenant_b))
    page.get_by_role("button", name="Show tenant").click()
    # Then the list is B's only, and the choice is in the URL
    expect(page.locator(f'tr[data-event-id="{event_b}"]')).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(1)
    assert f"tenant_id={tenant_b}" in page.url
    # When "all" is picked, every tenant's events are listed, with their tenant
    page.get_by_role("button", name="All tenants").click()
    for event_id, tenant in ((event_a, tenant_a), (event_b, tenant_b)):
        row = page.locator(f'tr[data-event-id="{event_id}"]')
        expect(row).to_be_visible()
        expect(row).to_contain_text(str(tenant))
    assert "tenant_id" not in page.url


def test_markup_in_an_event_renders_as_text(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given an event whose type, entity, data and error hold markup and script
    tok = mint(tenant)
    event = publish(
        http,
        tok,
        IDLE_MODULE,
        event_type=HOSTILE_SCRIPT,
        entity_id=HOSTILE_HTML,
        html=HOSTILE_HTML,
        script=HOSTILE_SCRIPT,
        **{HOSTILE_HTML: "a key"},
    )
    error = f"{HOSTILE_HTML}{HOSTILE_SCRIPT}"
    failed = http.put(
        f"/system/events/{event['id']}",
        headers=auth(tok),
        json={"status": "failed", "error_message": error},
    )
    assert failed.status_code == 200, failed.text
    # When the operator lists it and opens it
    sign_in(page, tok, "/ui?view=events")
    row = page.locator(f'tr[data-event-id="{event["id"]}"]')
    expect(row).to_contain_text(HOSTILE_SCRIPT)
    expect(row).to_contain_text(HOSTILE_HTML)
    row.get_by_role("link").click()
    # Then every string is shown as its characters; no element was made of them and no
    # dialog fired (the page fixture fails the test on any dialog or console error)
    data = page.locator('pre[data-field="event_data"]')
    expect(data).to_contain_text(f'"html": "{HOSTILE_HTML}"')
    expect(data).to_contain_text(f'"script": "{HOSTILE_SCRIPT}"')
    expect(page.locator('pre[data-field="error_message"]')).to_have_text(error)
    expect(page.locator('[data-field="event_type"]')).to_have_text(HOSTILE_SCRIPT)
    expect(page.locator('[data-field="entity_id"]')).to_have_text(HOSTILE_HTML)
    assert page.locator("img").count() == 0
    assert page.evaluate("document.scripts.length") == 1  # the page's own module
    assert page.evaluate("document.scripts[0].src").endswith("/ui/assets/app.js")
    screenshot(page, "detail-hostile")


def test_sign_out_clears_session_storage(page: Page, mint: TokenFactory, tenant: uuid.UUID) -> None:
    sign_in(page, mint(tenant))
    assert page.evaluate("sessionStorage.length") == 1
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Bearer token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    # A reload finds no token either
    page.reload()
    expect(page.get_by_label("Bearer token")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_the_apis_refusals_are_shown_with_its_message(
    page: Page, mint: TokenFactory, tenant: uuid.UUID, watch: Watch
) -> None:
    watch.allow(r"status of 40[13]")
    # A token without manage:system: the API's 403, and the page stays signed in
    sign_in(page, mint(tenant, permissions=[]))
    expect(page.get_by_role("alert")).to_have_text("Insufficient permissions")
    expect(page.locator("#live")).to_contain_text("Retrying in")
    # A token the API cannot verify: its 401, and the page asks for another token
    page.get_by_role("button", name="Sign out").click()
    forged = mint_token("not-the-api-secret-but-long-enough-0123456789", sub="mallory")
    page.get_by_label("Bearer token").fill(forged)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Invalid token")
    expect(page.get_by_label("Bearer token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_the_dashboard_works_from_the_keyboard(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    tok = mint(tenant)
    event = publish(http, tok, IDLE_MODULE)
    page.goto("/ui")
    # The token field has the focus: type, Enter signs in
    expect(page.get_by_label("Bearer token")).to_be_focused()
    page.keyboard.type(tok)
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    # Tab reaches the Events link, with a visible focus ring; Enter opens the list
    events_link = page.get_by_role("link", name="Events", exact=True)
    _tab_to(page, events_link)
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Events", level=1)).to_be_focused()
    # The event's link, then Retry: the dialog takes the focus, Escape cancels it
    _tab_to(page, page.get_by_role("link", name=f"Event {event['id']}"))
    page.keyboard.press("Enter")
    retry = page.get_by_role("button", name="Retry…")
    _tab_to(page, retry)
    page.keyboard.press("Enter")
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(retry).to_be_focused()


def _tab_to(page: Page, target: Locator, presses: int = 40) -> None:
    """Press Tab until ``target`` has the focus, at most ``presses`` times."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if target.evaluate("node => node === document.activeElement"):
            return
    raise AssertionError(f"Tab never reached {target}")
