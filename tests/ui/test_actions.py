"""What an operator does in the dashboard, against a live API and worker: watch an event get
processed, retry a failed one, replay by filter."""

from __future__ import annotations

import uuid

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.tokens import TokenFactory
from tests.ui.browser import (
    detail,
    mark_document,
    publish,
    same_document,
    screenshot,
    sign_in,
    wait_detail,
)

pytestmark = pytest.mark.ui

LIVE_MS = 5000
"""The page polls about every 1.2 s, so it shows a change within 2 s; the wait is wider for a
shared machine (timing targets live in make bench, not in tests)."""


def test_a_published_event_turns_processed_in_the_open_list(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given the events list open, its document marked
    tok = mint(tenant)
    sign_in(page, tok)
    page.get_by_role("link", name="Events").click()
    expect(page.get_by_text("0 events match no filter")).to_be_visible()
    mark_document(page)
    # When an event is published whose handler takes a while
    event = publish(http, tok, "warehouse", sleep=2.5)
    row = page.locator(f'tr[data-event-id="{event["id"]}"]')
    # Then it shows up pending, then processed, in the same document (no reload)
    expect(row.locator(".badge")).to_have_text("pending", timeout=LIVE_MS)
    wait_detail(http, tok, event["id"], lambda d: d["event"]["status"] == "processed", "processed")
    expect(row.locator(".badge")).to_have_text("processed", timeout=LIVE_MS)
    assert same_document(page)
    expect(page.locator("#live")).to_contain_text("Live · updated")


def test_a_failed_event_shows_its_attempts_and_retry_runs_it_again(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given an event whose handler failed three times and gave up
    tok = mint(tenant)
    event = publish(http, tok, "flaky", fail_until=3)
    wait_detail(
        http,
        tok,
        event["id"],
        lambda d: len(d["attempts"]) == 3 and d["event"]["status"] == "failed",
        "failed 3 times",
    )
    # When the operator opens it from the list of failed events
    sign_in(page, tok, "/ui?view=events&status=failed")
    page.get_by_role("link", name=f"Event {event['id']}").click()
    # Then every attempt is in the timeline with its error, and the event's error is shown
    attempts = page.locator(".timeline li")
    expect(attempts).to_have_count(3)
    for n in (1, 2, 3):
        attempt = page.locator(f'li[data-attempt="{n}"]')
        expect(attempt.locator(".badge")).to_have_text("failed")
        expect(attempt.locator("pre")).to_have_text(f"RuntimeError: planned failure of attempt {n}")
    expect(page.locator('pre[data-field="error_message"]')).to_have_text(
        "RuntimeError: planned failure of attempt 3"
    )
    expect(page.locator('[data-field="retry_count"]')).to_have_text("3")
    expect(page.locator('pre[data-field="event_data"]')).to_have_text('{\n  "fail_until": 3\n}')
    screenshot(page, "detail")
    mark_document(page)
    # When Retry is asked for and the confirmation cancelled, nothing happens
    dialog = page.locator("dialog#confirm")
    page.get_by_role("button", name="Retry…").click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Event {event['id']} is set pending and sent to flaky")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert detail(http, tok, event["id"])["event"]["status"] == "failed"
    # When it is asked for again and confirmed
    page.get_by_role("button", name="Retry…").click()
    dialog.get_by_role("button", name="Retry").click()
    # Then the event runs once more (its fourth attempt succeeds) and the page shows it live
    expect(page.get_by_role("status")).to_contain_text("Event set pending and sent to flaky")
    expect(attempts).to_have_count(4, timeout=LIVE_MS)
    expect(page.locator('li[data-attempt="4"] .badge')).to_have_text("processed")
    expect(page.locator('[data-field="status"] .badge')).to_have_text("processed")
    answer = wait_detail(http, tok, event["id"], lambda d: len(d["attempts"]) == 4, "retried")
    assert answer["event"]["status"] == "processed"
    assert same_document(page)


def test_replay_by_filter_previews_the_count_then_replays(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given three processed events of one type and one of another
    tok = mint(tenant)
    chosen = [publish(http, tok, "warehouse", event_type="replay_me")["id"] for _ in range(3)]
    other = publish(http, tok, "warehouse", event_type="leave_me")["id"]
    for event_id in [*chosen, other]:
        wait_detail(http, tok, event_id, lambda d: d["event"]["status"] == "processed", "done")
    # When the operator filters the list and asks to replay what it shows
    sign_in(page, tok, "/ui?view=events")
    page.get_by_label("Event type").fill("replay_me")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("tbody tr")).to_have_count(3)
    page.get_by_role("link", name="Replay these events…").click()
    # Then the replay view keeps the filter and previews the count (a dry run)
    expect(page.get_by_label("Event type")).to_have_value("replay_me")
    preview = page.locator(".preview")
    expect(preview).to_have_attribute("data-matched", "3")
    expect(preview).to_contain_text("3 events match event type = replay_me")
    screenshot(page, "replay")
    for event_id in chosen:  # a preview changes nothing
        assert len(_attempts(http, tok, event_id)) == 1
    # When the replay is confirmed
    page.get_by_role("button", name="Replay 3 events…").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text("3 of 3 matching events")
    dialog.get_by_role("button", name="Replay", exact=True).click()
    # Then the three events run again, the other does not
    expect(page.locator(".result")).to_have_text("Replayed 3 of 3 matching events.")
    for event_id in chosen:
        wait_detail(
            http,
            tok,
            event_id,
            lambda d: len(d["attempts"]) == 2 and d["event"]["status"] == "processed",
            "replayed",
        )
    assert len(_attempts(http, tok, other)) == 1


def _attempts(http: httpx.Client, tok: str, event_id: str) -> list[dict[str, object]]:
    attempts: list[dict[str, object]] = detail(http, tok, event_id)["attempts"]
    return attempts


def test_a_held_key_is_released_and_a_module_paused_from_the_overview(
    page: Page, http: httpx.Client, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given an ordered event that failed for good, holding its entity, and one waiting behind it
    tok = mint(tenant)
    blocked = publish(http, tok, "ordered", entity_id="shelf-1", fail_until=99)
    behind = publish(http, tok, "ordered", entity_id="shelf-1")
    wait_detail(
        http,
        tok,
        blocked["id"],
        lambda d: d["event"]["status"] == "failed" and d["next_attempt_at"] is None,
        "failed for good",
    )
    # Then the overview lists the held key with what waits behind it
    sign_in(page, tok)
    row = page.locator(f'tr[data-held="{blocked["id"]}"]')
    expect(row).to_contain_text("shelf-1")
    expect(row.locator("td.num").nth(1)).to_have_text("1")
    assert detail(http, tok, behind["id"])["event"]["status"] == "pending"
    # When the operator releases it and confirms
    row.get_by_role("button", name="Release").click()
    page.locator("dialog#confirm").get_by_role("button", name="Release").click()
    # Then the event behind runs, and the key leaves the list
    expect(page.get_by_role("status")).to_contain_text("Key released successfully")
    wait_detail(http, tok, behind["id"], lambda d: d["event"]["status"] == "processed", "ran")
    expect(row).to_be_hidden(timeout=LIVE_MS)
    # A tenant's user sees each module's state but may not pause one
    module = page.locator('li[data-module="ordered"]')
    expect(module).to_contain_text("delivering")
    expect(module.get_by_role("button")).to_have_count(0)

    # When a system admin pauses the module from the overview
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, mint(None, [], admin=True, sub="root"))
    module.get_by_role("button", name="Pause").click()
    page.locator("dialog#confirm").get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_contain_text("Module paused successfully")
    expect(module).to_contain_text("paused since", timeout=LIVE_MS)
    # Then an event published meanwhile waits, and runs once the module is resumed
    waiting = publish(http, tok, "ordered", entity_id="shelf-2")
    page.wait_for_timeout(1500)
    assert detail(http, tok, waiting["id"])["event"]["status"] == "pending"
    module.get_by_role("button", name="Resume").click()
    page.locator("dialog#confirm").get_by_role("button", name="Resume").click()
    wait_detail(http, tok, waiting["id"], lambda d: d["event"]["status"] == "processed", "ran")
    expect(module).to_contain_text("delivering", timeout=LIVE_MS)
