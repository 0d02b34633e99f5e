"""Whatever JSON a publisher sends, the answer is a 201 or a 4xx envelope: never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus.events.schemas import REQUIRED_FIELDS, parse_json_body
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TokenFactory, auth

EVENTS = "/system/events"
DELETE = object()

# Text as a JSON decoder may hand it over: any code point, lone surrogates and NUL included.
texts = st.text(st.characters(exclude_categories=())) | st.sampled_from(
    ["", "\x00", "\ud800", "é", "𝄞", "a" * 255, "a" * 256, "inventory", "Warehouse"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64])
    | st.floats()  # NaN and infinities included: json.dumps writes them as NaN/Infinity
    | texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=25,
)
field_names = st.sampled_from([*REQUIRED_FIELDS, "id", "status", "tenant_id"]) | texts
mutations = st.lists(st.tuples(field_names, st.just(DELETE) | json_values), min_size=1, max_size=3)

pytestmark = pytest.mark.slow  # generated cases: make test runs them, make check does not


def mutated_seed(changes: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(SEED_PUBLISH_BODY)
    for name, value in changes:
        if value is DELETE:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def typed(value: Any) -> Any:
    """``value`` with each number tagged by its JSON type: ``1 == 1.0`` in Python, not here."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (type(value).__name__, value)
    return value


def assert_answered(client: TestClient, h: dict[str, str], body: Any) -> None:
    raw = json.dumps(body)  # ASCII only: lone surrogates travel as \\udxxx escapes
    response = client.post(EVENTS, headers=h, content=raw)
    assert response.status_code in (201, 400, 413), (response.status_code, raw[:500])
    answer = response.json()
    event(f"{response.status_code} {answer['message']}")
    if response.status_code == 201:
        # Numbers as jsonb keeps them: the decimal the text denotes (3.6e+16 is an integer)
        sent = parse_json_body(raw.encode())
        assert typed(answer["event"]["event_data"]) == typed(sent["event_data"])
        # And the list gives back exactly what the publish answered, number types included
        listed = client.get(EVENTS, headers=h, params={"limit": "1"}).json()["events"][0]
        assert listed["id"] == answer["event"]["id"]
        assert typed(listed["event_data"]) == typed(answer["event"]["event_data"])
        assert {k: answer["event"][k] for k in REQUIRED_FIELDS[:-1]} == {
            k: sent[k] for k in REQUIRED_FIELDS[:-1]
        }
    else:
        assert set(answer) == {"success", "message"} and answer["success"] is False
        assert isinstance(answer["message"], str) and answer["message"]


PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(body=json_values)
def test_any_json_value_as_the_body(client: TestClient, token: TokenFactory, body: Any) -> None:
    assert_answered(client, auth(token()), body)


@PROPERTY
@given(changes=mutations)
def test_any_mutation_of_the_seeds_body(
    client: TestClient, token: TokenFactory, changes: list[tuple[str, Any]]
) -> None:
    assert_answered(client, auth(token()), mutated_seed(changes))


@PROPERTY
@given(data=st.dictionaries(texts, json_values, max_size=6))
def test_any_object_as_event_data(
    client: TestClient, token: TokenFactory, data: dict[str, Any]
) -> None:
    assert_answered(client, auth(token()), {**SEED_PUBLISH_BODY, "event_data": data})
