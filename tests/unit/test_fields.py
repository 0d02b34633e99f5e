"""An event's fields are defined once (``bus.events.fields``); every other place that names
them agrees with that definition."""

from __future__ import annotations

import dataclasses
import inspect
import typing

from bus.events import fields
from bus.events.schemas import REQUIRED_FIELDS, NewEvent, event_view
from bus.storage.models import EventRow, SystemEvent
from eventbus import _calls, client, outbox
from workers.event import Event


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def test_the_table_and_the_row_type_hold_every_column_in_order() -> None:
    assert tuple(SystemEvent.__table__.columns.keys()) == fields.COLUMNS
    assert _names(EventRow) == fields.COLUMNS


def test_the_input_rules_take_what_a_publisher_sends() -> None:
    assert _names(NewEvent) == fields.PUBLISHED
    assert REQUIRED_FIELDS == fields.PUBLISHED


def test_the_seed_view_shows_the_seed_fields_in_order() -> None:
    row = EventRow(**{name: None for name in fields.COLUMNS})
    assert tuple(event_view(row)) == fields.SEED


def test_a_handler_sees_the_published_fields_and_no_bookkeeping() -> None:
    names = set(_names(Event))
    assert set(fields.PUBLISHED) <= names
    assert not names & {"dispatched_at", "next_attempt_at", "status", "error_message"}


def test_the_outbox_publishes_the_published_fields() -> None:
    parameters = inspect.signature(outbox.publish).parameters
    assert tuple(p for p in parameters if p in fields.PUBLISHED) == fields.PUBLISHED
    assert set(parameters) - set(fields.PUBLISHED) == {
        "session",
        "tenant_id",
        "max_event_data_bytes",
    }


def test_the_client_sends_and_reads_the_same_fields() -> None:
    sent = _calls._publish_body(*fields.TEXT, {})
    assert tuple(sent) == fields.PUBLISHED
    assert tuple(inspect.signature(client.Client.publish).parameters)[1:7] == fields.PUBLISHED
    assert tuple(typing.get_type_hints(_calls.Event)) == fields.SEED
