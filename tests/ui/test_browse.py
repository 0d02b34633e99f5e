"""Sign in, the overview, the list, paging: what an operator reads in the dashboard."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Page, expect

from bus.runtime import Runtime
from tests.support.factories import make_event
from tests.support.tokens import TokenFactory, auth
from tests.ui.browser import (
    IDLE_MODULE,
    PHONE,
    Stack,
    publish,
    screenshot,
    sign_in,
    wait_detail,
)

pytestmark = pytest.mark.ui


def test_sign_in_keeps_the_token_in_session_storage_only(
    page: Page, stack: Stack, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given a token of a tenant with a few events
    tok = mint(tenant, sub="ops-alice")
    for _ in range(2):
        publish(http, tok, IDLE_MODULE)
    # When the operator pastes it into the sign-in form
    sign_in(page, tok)
    # Then the header says who is signed in, the overview counts the tenant's events...
    expect(page.get_by_text("Signed in as ops-alice")).to_be_visible()
    expect(page.get_by_text(f"tenant {tenant}").first).to_be_visible()
    row = page.locator(f'tr[data-module="{IDLE_MODULE}"]')
    expect(row.locator('[data-count="pending"]')).to_have_text("2")
    # ...and the token is in sessionStorage, never in the URL, a cookie or localStorage.
    assert page.evaluate("sessionStorage.getItem('eventbus.token')") == tok
    assert tok not in page.url
    assert page.context.cookies() == []
    assert page.evaluate("localStorage.length") == 0


def test_each_count_links_to_its_filtered_list_and_the_chart_draws_the_hour(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given one event processed, one that fails until it gives up, and one still pending
    tok = mint(tenant)
    done = publish(http, tok, "warehouse")
    failing = publish(http, tok, "flaky", fail_until=3)
    publish(http, tok, IDLE_MODULE)
    wait_detail(http, tok, done["id"], lambda d: d["event"]["status"] == "processed", "processed")
    wait_detail(http, tok, failing["id"], lambda d: len(d["attempts"]) == 3, "failed 3 times")
    # When the operator opens the overview
    sign_in(page, tok)
    flaky = page.locator('tr[data-module="flaky"]')
    # Then each module's counts are there, "gave up" being failed minus retry scheduled
    expect(flaky.locator('[data-count="failed"]')).to_have_text("1")
    expect(flaky.locator('[data-count="retry_scheduled"]')).to_have_text("0")
    expect(flaky.locator('[data-count="gave_up"]')).to_have_text("1")
    expect(page.locator('tr[data-module="warehouse"] [data-count="processed"]')).to_have_text("1")
    expect(page.locator(f'tr[data-module="{IDLE_MODULE}"] [data-count="pending"]')).to_have_text(
        "1"
    )
    # ...and the chart draws the minutes in which handlers ran (4 outcomes: 1 + 3)
    stats = http.get("/system/events/stats?series=minute", headers=auth(tok)).json()
    assert sum(p["processed"] + p["failed"] for p in stats["series"]) == 4, stats
    chart = page.locator('figure[data-chart="bars"]')
    expect(chart.locator("rect.bar-processed").first).to_be_attached()
    expect(chart.locator("rect.bar-failed").first).to_be_attached()
    expect(chart.get_by_role("img")).to_have_attribute(
        "aria-label", "Last hour: 1 processed, 3 failed, 0 lost."
    )
    screenshot(page, "overview")
    # When the "gave up" count is followed, the list holds the failed event of that module only
    flaky.locator('[data-count="gave_up"] a').click()
    expect(page).to_have_url(
        re.compile(r"view=events&status=failed&target_module=flaky&retry_scheduled=false$")
    )
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-event-id", failing["id"])
    expect(page.get_by_label("Status")).to_have_value("failed")
    expect(page.get_by_label("Target module")).to_have_value("flaky")
    expect(page.get_by_label("Retry scheduled")).to_have_value("false")


def test_filters_live_in_the_url_and_the_cursor_pages_through(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given five events of one type and one of another, none of which a worker takes
    tok = mint(tenant)
    paged = [publish(http, tok, IDLE_MODULE, event_type="paged")["id"] for _ in range(5)]
    publish(http, tok, IDLE_MODULE, event_type="other")
    newest_first = paged[::-1]
    sign_in(page, tok, "/ui?view=events&limit=2")
    # When the operator filters by event type
    page.get_by_label("Event type").fill("paged")
    page.get_by_role("button", name="Apply filters").click()
    # Then the filter is in the URL (the token is not) and the list is newest first, two a page
    expect(page).to_have_url(re.compile(r"\?view=events&event_type=paged&limit=2$"))
    assert tok not in page.url
    ids = page.locator("tbody tr")

    def shown() -> list[str | None]:
        return [ids.nth(i).get_attribute("data-event-id") for i in range(ids.count())]

    expect(page.get_by_text("5 events match event type = paged")).to_be_visible()
    expect(ids).to_have_count(2)
    assert shown() == newest_first[0:2]
    # When "Next" is followed twice, then the first page asked for again
    page.get_by_role("link", name="Next page (older) →").click()
    expect(ids.first).to_have_attribute("data-event-id", newest_first[2])
    assert shown() == newest_first[2:4]
    assert "cursor=" in page.url
    page.get_by_role("link", name="Next page (older) →").click()
    expect(ids).to_have_count(1)
    assert shown() == newest_first[4:5]
    expect(page.get_by_role("link", name="Next page (older) →")).to_have_count(0)
    page.get_by_role("link", name="← Newest (first page)").click()
    expect(ids.first).to_have_attribute("data-event-id", newest_first[0])
    assert shown() == newest_first[0:2]
    # And a reload (a shared link) shows the same view, filters in the form
    page.reload()
    expect(page.get_by_label("Event type")).to_have_value("paged")
    expect(ids).to_have_count(2)
    assert shown() == newest_first[0:2]
    screenshot(page, "events")


def test_the_list_fits_a_phone_screen(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given events with long identifiers, and a phone-width screen
    tok = mint(tenant)
    event = publish(http, tok, IDLE_MODULE, entity_id="entity-" + "x" * 120, note="y" * 400)
    page.set_viewport_size(PHONE)
    sign_in(page, tok, "/ui?view=events")
    expect(page.locator(f'tr[data-event-id="{event["id"]}"]')).to_be_visible()
    # Then the page never scrolls sideways; the table scrolls inside its own box
    assert page.evaluate(NO_PAGE_OVERFLOW), page.evaluate(WIDTHS)
    assert page.evaluate(
        "(() => { const w = document.querySelector('.table-wrap');"
        " return w.scrollWidth > w.clientWidth && getComputedStyle(w).overflowX === 'auto'; })()"
    )
    screenshot(page, "phone-events")
    # And so do the detail and the overview
    page.locator(f'tr[data-event-id="{event["id"]}"] a').click()
    expect(page.locator('pre[data-field="event_data"]')).to_contain_text("yyyy")
    assert page.evaluate(NO_PAGE_OVERFLOW), page.evaluate(WIDTHS)
    screenshot(page, "phone-detail")
    page.get_by_role("link", name="Overview").click()
    expect(page.locator(f'tr[data-module="{IDLE_MODULE}"]')).to_be_visible()
    assert page.evaluate(NO_PAGE_OVERFLOW), page.evaluate(WIDTHS)
    screenshot(page, "phone-overview")


NO_PAGE_OVERFLOW = (
    "document.documentElement.scrollWidth <= window.innerWidth"
    " && document.body.scrollWidth <= window.innerWidth"
)
WIDTHS = (
    "({inner: window.innerWidth, html: document.documentElement.scrollWidth,"
    " body: document.body.scrollWidth})"
)


def test_a_failed_event_with_a_retry_to_come_says_when(
    page: Page, stack: Stack, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given a failed event of a module with no worker, its automatic retry due in an hour
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    runtime = Runtime(stack.settings)
    try:
        event = make_event(
            runtime,
            tenant_id=tenant,
            target_module=IDLE_MODULE,
            status="failed",
            retry_count=1,
            error_message="TimeoutError: upstream",
            next_attempt_at=due,
        )
    finally:
        runtime.close()
    # When its detail is opened
    sign_in(page, mint(tenant), f"/ui?view=event&id={event['id']}")
    # Then it is failed with a retry scheduled, and says when
    badges = page.locator('[data-field="status"] .badge')
    expect(badges).to_have_text(["failed", "retry scheduled"])
    expect(page.locator('[data-field="next_attempt_at"]')).to_contain_text(
        due.strftime("%Y-%m-%d %H:%M:%S")
    )
