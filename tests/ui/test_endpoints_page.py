"""The Endpoints view and an event's deliveries, in a real browser against the live API: webhook
endpoints made through the API (at 127.0.0.1, which the stack's settings allow; their module
has no worker, so nothing is ever sent to them), delivery rows and an endpoint's health written
straight to the database as a worker would, then what the operator sees and does."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import Engine, create_engine, update
from sqlalchemy.orm import Session

from bus.storage import delivery_store
from bus.storage.delivery_store import DeliveryRow
from bus.storage.models import webhook_endpoints
from tests.support.tokens import TokenFactory, auth
from tests.ui.browser import IDLE_MODULE, Stack, publish, screenshot, sign_in

pytestmark = pytest.mark.ui

LIVE_MS = 5000
HOSTILE_HTML = "<img src=x onerror=alert(1)>"
HOSTILE_SCRIPT = "<script>alert(2)</script>"
SECRET = re.compile(r"^whsec_[A-Za-z0-9+/=]{20,}$")


@pytest.fixture
def engine(stack: Stack) -> Iterator[Engine]:
    """The stack's database, to write what a worker would (deliveries, an endpoint's health)."""
    instance = create_engine(stack.settings.database_url)
    yield instance
    instance.dispose()


@dataclass(frozen=True)
class Setup:
    tok: str
    healthy: dict[str, Any]  # its deliveries acknowledged
    failing: dict[str, Any]  # failing since FAILING_SINCE, two failed deliveries
    events: list[dict[str, Any]]  # newest failure first
    failing_since: datetime


def _create(http: httpx.Client, tok: str, url: str, **fields: Any) -> dict[str, Any]:
    body = {"target_module": IDLE_MODULE, "url": url, **fields}
    response = http.post("/system/endpoints", headers=auth(tok), json=body)
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()["endpoint"]
    assert SECRET.match(endpoint["secret"])
    return endpoint


def _endpoint(http: httpx.Client, tok: str, endpoint_id: str) -> dict[str, Any]:
    response = http.get(f"/system/endpoints/{endpoint_id}", headers=auth(tok))
    assert response.status_code == 200, response.text
    endpoint: dict[str, Any] = response.json()["endpoint"]
    return endpoint


def _created_at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["created_at"])


def _delivery(
    event: dict[str, Any], endpoint: dict[str, Any], tenant: uuid.UUID, **fields: Any
) -> DeliveryRow:
    return DeliveryRow(
        event_id=uuid.UUID(event["id"]),
        endpoint_id=uuid.UUID(endpoint["id"]),
        tenant_id=tenant,
        event_created_at=_created_at(event),
        **fields,
    )


def _write(engine: Engine, rows: list[DeliveryRow], **health: Any) -> None:
    """Save delivery rows, and set ``{endpoint_id: {column: value}}`` on endpoints."""
    with Session(engine) as session, session.begin():
        delivery_store.save(session, rows)
        for endpoint_id, values in health.items():
            session.execute(
                update(webhook_endpoints)
                .where(webhook_endpoints.c.id == uuid.UUID(endpoint_id))
                .values(**values)
            )


def _setup(http: httpx.Client, engine: Engine, tok: str, tenant: uuid.UUID) -> Setup:
    """Two endpoints of the idle module; two events, the newer acknowledged by one endpoint
    and failed (503) with the other, the older failed (no answer) with the other too."""
    healthy = _create(http, tok, "http://127.0.0.1:9/hook-a", event_types=["inventory_updated"])
    failing = _create(
        http, tok, "http://127.0.0.1:9/hook-b", format="cloudevents-structured", ordered=True
    )
    older = publish(http, tok, IDLE_MODULE, entity_id="item-old")
    newer = publish(http, tok, IDLE_MODULE, entity_id="item-new")
    now = datetime.now(UTC).replace(microsecond=0)
    failing_since = now - timedelta(hours=1)
    rows = [
        _delivery(
            newer,
            healthy,
            tenant,
            status="acknowledged",
            requests=1,
            last_status_code=200,
            last_error=None,
            last_attempt_at=now - timedelta(minutes=6),
            acknowledged_at=now - timedelta(minutes=6),
        ),
        _delivery(
            newer,
            failing,
            tenant,
            status="failed",
            requests=3,
            last_status_code=503,
            last_error="HTTP 503: upstream is down",
            last_attempt_at=now - timedelta(minutes=5),
        ),
        _delivery(
            older,
            failing,
            tenant,
            status="failed",
            requests=1,
            last_status_code=None,
            last_error="Timed out after 15 s",
            last_attempt_at=now - timedelta(minutes=20),
        ),
    ]
    _write(engine, rows, **{failing["id"]: {"failing_since": failing_since}})
    return Setup(tok, healthy, failing, [newer, older], failing_since)


def _utc(at: datetime) -> str:
    return f"{at.strftime('%Y-%m-%d %H:%M:%S')} UTC"


def test_the_endpoints_view_shows_health_and_last_failures_and_an_events_deliveries(
    page: Page, http: httpx.Client, engine: Engine, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given two endpoints, one failing for an hour, and deliveries of two events
    setup = _setup(http, engine, mint(tenant), tenant)
    newer, older = setup.events
    # When the operator opens the Endpoints view
    sign_in(page, setup.tok)
    page.get_by_role("link", name="Endpoints").click()
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_focused()
    expect(page.get_by_text("2 endpoints in tenant")).to_be_visible()
    # Then both are listed, oldest first, with their settings and health
    rows = page.locator("tr[data-endpoint-id]")
    expect(rows).to_have_count(2)
    healthy = page.locator(f'tr[data-endpoint-id="{setup.healthy["id"]}"]')
    failing = page.locator(f'tr[data-endpoint-id="{setup.failing["id"]}"]')
    expect(rows.first).to_have_attribute("data-endpoint-id", setup.healthy["id"])
    expect(healthy.locator('[data-field="url"]')).to_have_text("http://127.0.0.1:9/hook-a")
    expect(healthy).to_contain_text(IDLE_MODULE)
    expect(healthy).to_contain_text("inventory_updated")
    expect(healthy.locator("[data-health]")).to_have_attribute("data-health", "healthy")
    expect(healthy.locator("[data-health]")).to_have_text("Enabled and healthy")
    expect(failing.locator("td").nth(2)).to_have_text("all")
    expect(failing).to_contain_text("cloudevents-structured")
    expect(failing.locator("td").nth(4)).to_have_text("yes")
    expect(failing.locator("[data-health]")).to_have_attribute("data-health", "failing")
    expect(failing.locator("[data-health]")).to_have_text(
        f"Failing since {_utc(setup.failing_since)}"
    )
    # When its last failures are opened
    toggle = failing.get_by_role("button", name="Last failures")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    # Then they are shown newest first: time, status code, error, event
    failures = page.locator(f'tr[data-failures-for="{setup.failing["id"]}"] tbody tr')
    expect(failures).to_have_count(2)
    first, second = failures.nth(0), failures.nth(1)
    expect(first).to_have_attribute("data-delivery-event", newer["id"])
    expect(first.locator("td").nth(1)).to_have_text("503")
    expect(first.locator("pre")).to_have_text("HTTP 503: upstream is down")
    expect(second).to_have_attribute("data-delivery-event", older["id"])
    expect(second.locator("td").nth(1)).to_have_text("no answer")
    expect(second.locator("pre")).to_have_text("Timed out after 15 s")
    # The healthy one has none
    healthy.get_by_role("button", name="Last failures").click()
    expect(page.locator(f'tr[data-failures-for="{setup.healthy["id"]}"]')).to_contain_text(
        "No failed delivery."
    )
    screenshot(page, "endpoints")
    # When the newest failure's event is opened
    first.get_by_role("link", name=f"Event {newer['id']}").click()
    # Then the event's deliveries are listed, one per endpoint
    expect(page.get_by_role("heading", name="Deliveries (2)")).to_be_visible()
    acked = page.locator(f'tr[data-delivery-endpoint="{setup.healthy["id"]}"]')
    failed = page.locator(f'tr[data-delivery-endpoint="{setup.failing["id"]}"]')
    expect(acked.locator("td")).to_have_text(
        [
            setup.healthy["id"],
            "acknowledged",
            "1",
            "200",
            "—",
            re.compile(" UTC$"),
            re.compile(" UTC$"),
        ]
    )
    expect(failed.locator("td")).to_have_text(
        [
            setup.failing["id"],
            "failed",
            "3",
            "503",
            "HTTP 503: upstream is down",
            re.compile(" UTC$"),
            "—",
        ]
    )
    screenshot(page, "detail-deliveries")
    # And an endpoint's id leads back to it, its last failures open
    failed.get_by_role("link", name=setup.failing["id"]).click()
    expect(page.locator(f'tr[data-failures-for="{setup.failing["id"]}"] tbody tr')).to_have_count(2)
    # An event no endpoint took has no delivery
    alone = publish(http, setup.tok, IDLE_MODULE, entity_id="item-alone")
    page.goto(f"/ui?view=event&id={alone['id']}")
    expect(page.get_by_role("heading", name="Deliveries (0)")).to_be_visible()
    expect(page.locator('[data-field="deliveries"]')).to_have_text("None yet.")


def test_disable_then_enable_change_the_endpoint(
    page: Page, http: httpx.Client, engine: Engine, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    setup = _setup(http, engine, mint(tenant), tenant)
    endpoint_id = setup.healthy["id"]
    sign_in(page, setup.tok, "/ui?view=endpoints")
    row = page.locator(f'tr[data-endpoint-id="{endpoint_id}"]')
    health = row.locator("[data-health]")
    dialog = page.locator("dialog#confirm")
    expect(health).to_have_text("Enabled and healthy")
    # When Disable is confirmed
    row.get_by_role("button", name="Disable…").click()
    expect(dialog).to_contain_text("http://127.0.0.1:9/hook-a receives no event")
    dialog.get_by_role("button", name="Disable").click()
    # Then the endpoint is disabled, by an operator, and the page says so
    expect(page.get_by_role("status")).to_have_text("Endpoint disabled: http://127.0.0.1:9/hook-a")
    expect(health).to_have_text("Disabled: Disabled by an operator", timeout=LIVE_MS)
    now = _endpoint(http, setup.tok, endpoint_id)
    assert (now["enabled"], now["disabled_reason"]) == (False, "Disabled by an operator")
    # When Enable is confirmed
    row.get_by_role("button", name="Enable…").click()
    dialog.get_by_role("button", name="Enable").click()
    # Then it is enabled again
    expect(health).to_have_text("Enabled and healthy", timeout=LIVE_MS)
    now = _endpoint(http, setup.tok, endpoint_id)
    assert (now["enabled"], now["disabled_reason"]) == (True, None)
    # Enabling a failing endpoint starts its clock again
    failing = page.locator(f'tr[data-endpoint-id="{setup.failing["id"]}"]')
    failing.get_by_role("button", name="Disable…").click()
    dialog.get_by_role("button", name="Disable").click()
    expect(failing.locator("[data-health]")).to_have_attribute("data-health", "disabled")
    failing.get_by_role("button", name="Enable…").click()
    dialog.get_by_role("button", name="Enable").click()
    expect(failing.locator("[data-health]")).to_have_text("Enabled and healthy")
    assert _endpoint(http, setup.tok, setup.failing["id"])["failing_since"] is None


def test_rotate_secret_shows_the_new_secret_once(
    page: Page, http: httpx.Client, engine: Engine, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    setup = _setup(http, engine, mint(tenant), tenant)
    endpoint_id = setup.healthy["id"]
    sign_in(page, setup.tok, "/ui?view=endpoints")
    row = page.locator(f'tr[data-endpoint-id="{endpoint_id}"]')
    health = row.locator("[data-health]")
    dialog = page.locator("dialog#confirm")
    # When Rotate secret is asked for and cancelled, nothing changes
    box = page.locator(".secret-box")
    row.get_by_role("button", name="Rotate secret…").click()
    expect(dialog).to_contain_text("shown here once")
    dialog.get_by_role("button", name="Cancel").click()
    expect(box).to_be_hidden()
    assert _endpoint(http, setup.tok, endpoint_id)["previous_secret_expires_at"] is None
    # When it is confirmed
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    row.get_by_role("button", name="Rotate secret…").click()
    dialog.get_by_role("button", name="Rotate secret").click()
    # Then the new secret is shown once, focused and selected, with the warning
    secret = page.get_by_label("Secret", exact=True)
    expect(box).to_be_visible()
    expect(box).to_contain_text("it will not be shown again")
    expect(box).to_contain_text("The previous secret stays valid until")
    expect(secret).to_be_focused()
    shown = secret.input_value()
    assert SECRET.match(shown), shown
    assert shown != setup.healthy["secret"]
    rotated = _endpoint(http, setup.tok, endpoint_id)
    assert rotated["previous_secret_expires_at"] is not None
    assert "secret" not in rotated
    expect(health.locator("xpath=..")).to_contain_text("previous secret valid until")
    # Copy puts it on the clipboard
    box.get_by_role("button", name="Copy").click()
    expect(box).to_contain_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == shown
    screenshot(page, "endpoints-secret")
    # It is in the field only (the list, read again meanwhile, never shows it)
    page.wait_for_timeout(1500)
    assert shown not in page.locator("main").inner_text()
    assert shown not in page.url
    assert page.evaluate("JSON.stringify(sessionStorage)").count(shown) == 0
    # When it is hidden, it is gone from the page
    box.get_by_role("button", name="Done: hide it").click()
    expect(box).to_be_hidden()
    assert shown not in page.content()
    assert "whsec_" not in page.content()


def test_markup_in_an_endpoint_and_its_deliveries_renders_as_text(
    page: Page, http: httpx.Client, engine: Engine, mint: TokenFactory, tenant: uuid.UUID
) -> None:
    # Given an endpoint whose URL holds markup as the API takes it (no space), another stored
    # with markup in its URL and disabled reason, and a failed delivery whose error holds some
    tok = mint(tenant)
    taken = "http://127.0.0.1:9/hook?<img/src=x/onerror=alert(3)>"
    as_taken = _create(http, tok, taken)
    endpoint = _create(http, tok, "http://127.0.0.1:9/hook")
    event = publish(http, tok, IDLE_MODULE)
    url = f"http://127.0.0.1:9/{HOSTILE_HTML}"
    reason = f"{HOSTILE_SCRIPT}{HOSTILE_HTML}"
    error = f"{HOSTILE_HTML}{HOSTILE_SCRIPT}"
    row = _delivery(
        event,
        endpoint,
        tenant,
        status="failed",
        requests=1,
        last_status_code=500,
        last_error=error,
        last_attempt_at=datetime.now(UTC),
    )
    _write(
        engine,
        [row],
        **{endpoint["id"]: {"url": url, "enabled": False, "disabled_reason": reason}},
    )
    # When the operator lists it, opens its failures, and asks to enable it
    sign_in(page, tok, "/ui?view=endpoints")
    shown = page.locator(f'tr[data-endpoint-id="{as_taken["id"]}"] [data-field="url"]')
    expect(shown).to_have_text(taken)
    listed = page.locator(f'tr[data-endpoint-id="{endpoint["id"]}"]')
    expect(listed.locator('[data-field="url"]')).to_have_text(url)
    expect(listed.locator("[data-health]")).to_have_text(f"Disabled: {reason}")
    listed.get_by_role("button", name="Last failures").click()
    failures = page.locator(f'tr[data-failures-for="{endpoint["id"]}"]')
    expect(failures.locator("pre")).to_have_text(error)
    listed.get_by_role("button", name="Enable…").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"{url} receives {IDLE_MODULE}'s events again")
    dialog.get_by_role("button", name="Cancel").click()
    # Then every string is shown as its characters: no element was made of them, no dialog
    # fired (the page fixture fails the test on any dialog or console error)
    assert page.locator("main img, main script").count() == 0
    # And in the event's deliveries too
    failures.get_by_role("link", name=f"Event {event['id']}").click()
    delivery = page.locator(f'tr[data-delivery-endpoint="{endpoint["id"]}"]')
    expect(delivery.locator("pre")).to_have_text(error)
    assert page.locator("img").count() == 0
    assert page.evaluate("document.scripts.length") == 1  # the page's own module
    screenshot(page, "endpoints-hostile")
