"""Whatever body a publisher sends, a keyed publish answers what the key-less one does: the
same status and message (a 201 with the same event, or the same 400), never a 500."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.contract.test_property import json_values, mutated_seed, mutations, texts
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TokenFactory, auth

pytestmark = pytest.mark.slow  # generated cases: make test runs them, make check does not

BIG = "\x00raw 1e999\x00"
"""Stands for the JSON number ``1e999`` (a double cannot hold it; ``json.dumps`` cannot write
it), written into the raw body in place of this string."""

EVENT_FIELDS = ("event_type", "source_module", "target_module", "entity_type", "entity_id")
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
changes = mutations | st.lists(
    st.tuples(st.sampled_from(["note", "event_data", "entity_id"]), st.just(BIG)), min_size=1
)
noise = st.dictionaries(texts, json_values | st.just(BIG), max_size=3)
"""Fields a publish ignores, any name and value."""


def raw_json(body: Any) -> bytes:
    return json.dumps(body).replace(json.dumps(BIG), "1e999").encode()


def answer(response: Any) -> tuple[int, str, Any]:
    """Status, message and (on a 201) the events without what each publish makes anew."""
    body = response.json()
    events = body.get("events") or ([body["event"]] if "event" in body else [])
    kept = [{k: e[k] for k in (*EVENT_FIELDS, "event_data", "status")} for e in events]
    return response.status_code, body["message"], kept


def assert_same_answer(client: TestClient, headers: dict[str, str], path: str, raw: bytes) -> None:
    plain = {**headers, "Content-Type": "application/json"}
    without = client.post(path, headers=plain, content=raw)
    keyed = client.post(path, headers={**plain, "Idempotency-Key": uuid.uuid4().hex}, content=raw)
    event(f"{path} {without.status_code} {without.json()['message']}")
    assert without.status_code in (201, 400, 413), without.text
    assert answer(keyed) == answer(without), (raw[:300], keyed.text[:300])
    assert keyed.headers["x-content-type-options"] == "nosniff"


@PROPERTY
@given(changes=changes)
def test_a_keyed_publish_answers_as_the_key_less_one(
    client: TestClient, token: TokenFactory, changes: list[tuple[str, Any]]
) -> None:
    raw = raw_json(mutated_seed(changes))
    assert_same_answer(client, auth(token()), "/system/events", raw)


@PROPERTY
@given(changes=changes, ignored=noise)
def test_a_keyed_batch_answers_as_the_key_less_one(
    client: TestClient, token: TokenFactory, changes: list[tuple[str, Any]], ignored: Any
) -> None:
    items = [mutated_seed(changes), {**ignored, **SEED_PUBLISH_BODY}]
    raw = b'{"events":[' + b",".join(raw_json(item) for item in items) + b"]}"
    assert_same_answer(client, auth(token(system=True)), "/system/events/batch", raw)
