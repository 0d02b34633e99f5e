"""The OpenAPI document tells the truth: the seed's three operations and the stats of issue 5,
bearer auth, envelopes for errors. Probes and /metrics stay out of it. Its rules are checked
against bus/events/schemas.py's constants, the ones the parsers use (the contract is written
once)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import api
from bus.events.schemas import (
    EVENT_FIELDS,
    FILTER_PATTERN,
    IDENTIFIER_PATTERN,
    LIMIT_PATTERN,
    LIST_PARAMS,
    MAX_STRING,
    MODULE_NAME_PATTERN,
    OPTIONAL_UUID_PATTERN,
    PAGE_PATTERN,
    REQUIRED_FIELDS,
    STATUSES,
    TEXT_PATTERN,
    TIMESTAMP_PATTERN,
    UUID_PATTERN,
)
from bus.read.cursors import CURSOR_PATTERN
from tests.support.factories import SEED_PUBLISH_BODY
from tests.support.tokens import TokenFactory, auth

OPERATIONS = {
    ("get", "/system/events"): ("List Events", {"200", "400", "401", "403", "429", "500"}),
    ("post", "/system/events"): (
        "Publish Event",
        {"201", "400", "401", "403", "409", "413", "422", "500"},
    ),
    ("post", "/system/events/batch"): (
        "Publish Events",
        {"201", "400", "401", "403", "409", "413", "422", "429", "500"},
    ),
    ("put", "/system/events/{event_id}"): (
        "Update Event Status",
        {"200", "400", "401", "403", "404", "413", "500"},
    ),
    ("get", "/system/events/stats"): ("Event Stats", {"200", "400", "401", "403", "500"}),
    ("post", "/system/events/replay"): (
        "Replay Events",
        {"200", "400", "401", "403", "413", "429", "500"},
    ),
    ("get", "/system/events/{event_id}"): (
        "Get Event",
        {"200", "400", "401", "403", "404", "500"},
    ),
    ("get", "/system/modules"): ("List Modules", {"200", "401", "403", "500"}),
    ("post", "/system/modules/{module}/pause"): (
        "Pause Module",
        {"200", "400", "401", "403", "500"},
    ),
    ("post", "/system/modules/{module}/resume"): (
        "Resume Module",
        {"200", "400", "401", "403", "500"},
    ),
    ("get", "/system/held-keys"): ("List Held Keys", {"200", "400", "401", "403", "500"}),
    ("post", "/system/held-keys/{event_id}/release"): (
        "Release Held Key",
        {"200", "400", "401", "403", "404", "409", "500"},
    ),
    ("post", "/system/endpoints"): ("Create Endpoint", {"201", "400", "401", "403", "413", "500"}),
    ("get", "/system/endpoints"): ("List Endpoints", {"200", "400", "401", "403", "500"}),
    ("get", "/system/endpoints/{endpoint_id}"): (
        "Get Endpoint",
        {"200", "400", "401", "403", "404", "500"},
    ),
    ("put", "/system/endpoints/{endpoint_id}"): (
        "Update Endpoint",
        {"200", "400", "401", "403", "404", "413", "500"},
    ),
    ("delete", "/system/endpoints/{endpoint_id}"): (
        "Delete Endpoint",
        {"200", "400", "401", "403", "404", "500"},
    ),
    ("post", "/system/endpoints/{endpoint_id}/rotate-secret"): (
        "Rotate Endpoint Secret",
        {"200", "400", "401", "403", "404", "500"},
    ),
    ("get", "/system/endpoints/{endpoint_id}/deliveries"): (
        "List Endpoint Deliveries",
        {"200", "400", "401", "403", "404", "500"},
    ),
}
ERROR_ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return document["paths"][path][method]  # type: ignore[no-any-return]


def test_exactly_these_operations(document: dict[str, Any]) -> None:
    documented = {
        (method, path) for path, operations in document["paths"].items() for method in operations
    }

    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_each_operation_is_described(document: dict[str, Any], method: str, path: str) -> None:
    summary, codes = OPERATIONS[(method, path)]
    op = operation(document, method, path)

    assert op["summary"] == summary
    assert op["description"]  # the route's docstring
    # Every operation that can fail inside can find its database gone or its threads busy: 503
    retryable = {"503"} if "500" in codes else set()
    assert set(op["responses"]) == codes | retryable  # no FastAPI 422: a reused key's only
    if retryable:
        assert "Retry-After" in op["responses"]["503"]["headers"]


@pytest.mark.parametrize(
    ("method", "path"), [op for op, (_, codes) in OPERATIONS.items() if "429" in codes]
)
def test_a_429_says_when_to_retry(document: dict[str, Any], method: str, path: str) -> None:
    refused = operation(document, method, path)["responses"]["429"]

    assert "Too many concurrent requests" in refused["description"]
    assert refused["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}


def test_the_bearer_scheme(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]

    assert schemes == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": schemes["HTTPBearer"]["description"],
        }
    }
    for method, path in OPERATIONS:
        assert operation(document, method, path)["security"] == [{"HTTPBearer": []}]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_error_is_the_envelope(document: dict[str, Any], method: str, path: str) -> None:
    responses = operation(document, method, path)["responses"]
    errors = {code: r for code, r in responses.items() if code >= "400"}

    assert errors
    for response in errors.values():
        assert response["content"]["application/json"]["schema"] == ERROR_ENVELOPE
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["properties"]) == {"success", "message"}
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_success_envelopes(document: dict[str, Any]) -> None:
    def schema_of(method: str, path: str, code: str) -> Any:
        responses = operation(document, method, path)["responses"]
        return responses[code]["content"]["application/json"]["schema"]

    assert schema_of("get", "/system/events", "200") == {"$ref": "#/components/schemas/EventsPage"}
    assert schema_of("post", "/system/events", "201") == {
        "$ref": "#/components/schemas/EventEnvelope"
    }
    assert schema_of("get", "/system/events/stats", "200") == {
        "$ref": "#/components/schemas/EventStatsEnvelope"
    }
    stats = document["components"]["schemas"]["EventStatsEnvelope"]["properties"]
    assert set(stats) == {
        "success",
        "message",
        "tenant_id",
        "generated_at",
        "totals",
        "oldest_pending_age_seconds",
        "modules",
        "series",
    }
    required = document["components"]["schemas"]["EventStatsEnvelope"]["required"]
    assert "series" not in required  # only with ?series=minute
    page = document["components"]["schemas"]["EventsPage"]["properties"]
    assert list(page) == ["success", "message", "events", "page", "limit", "total", "next_cursor"]
    event = document["components"]["schemas"]["Event"]["properties"]
    assert list(event) == list(EVENT_FIELDS)
    assert event["status"]["enum"] == list(STATUSES)


def test_the_request_bodies(document: dict[str, Any]) -> None:
    def body_of(method: str, path: str) -> dict[str, Any]:
        body = operation(document, method, path)["requestBody"]
        assert body["required"] is True
        return body["content"]["application/json"]["schema"]  # type: ignore[no-any-return]

    publish = body_of("post", "/system/events")
    assert publish["required"] == list(REQUIRED_FIELDS)
    assert list(publish["properties"]) == list(REQUIRED_FIELDS)
    for name in ("event_type", "entity_type", "entity_id"):
        field = publish["properties"][name]
        assert (field["maxLength"], field["pattern"]) == (MAX_STRING, IDENTIFIER_PATTERN)
    for name in ("source_module", "target_module"):
        assert publish["properties"][name]["pattern"] == MODULE_NAME_PATTERN
    event_data = publish["properties"]["event_data"]
    assert event_data["type"] == "object"
    assert event_data["propertyNames"] == {"pattern": TEXT_PATTERN}  # no NUL in a key
    assert event_data["additionalProperties"] == {"$ref": "#/components/schemas/JsonValue"}
    assert "JsonValue" in document["components"]["schemas"]
    update = body_of("put", "/system/events/{event_id}")
    assert update["required"] == ["status"]
    assert update["properties"]["status"]["enum"] == list(STATUSES)
    assert update["properties"]["processed_at"]["pattern"] == TIMESTAMP_PATTERN
    assert "maxLength" not in update["properties"]["error_message"]  # cut, never refused
    assert "requestBody" not in operation(document, "get", "/system/events")


def test_the_list_documents_its_query(document: dict[str, Any]) -> None:
    parameters = operation(document, "get", "/system/events")["parameters"]
    schemas = {p["name"]: p["schema"] for p in parameters}

    assert [p["name"] for p in parameters] == list(LIST_PARAMS)
    assert schemas["tenant_id"]["pattern"] == OPTIONAL_UUID_PATTERN  # "" is no tenant
    assert schemas["status"]["enum"] == ["", *STATUSES]
    assert (schemas["page"]["pattern"], schemas["limit"]["pattern"]) == (
        PAGE_PATTERN,
        LIMIT_PATTERN,
    )
    for name in ("event_type", "source_module", "target_module", "entity_type"):
        assert schemas[name]["pattern"] == FILTER_PATTERN
    assert schemas["retry_scheduled"]["enum"] == ["", "true", "false"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/system/events"),
        ("put", "/system/events/{event_id}"),
        ("post", "/system/events/replay"),
    ],
)
def test_the_tenant_parameter(document: dict[str, Any], method: str, path: str) -> None:
    query = [p for p in operation(document, method, path)["parameters"] if p["in"] == "query"]

    assert [(p["name"], p["schema"]["pattern"]) for p in query] == [
        ("tenant_id", OPTIONAL_UUID_PATTERN)
    ]


def test_the_stats_parameters(document: dict[str, Any]) -> None:
    query = operation(document, "get", "/system/events/stats")["parameters"]

    assert [(p["name"], p["in"]) for p in query] == [("tenant_id", "query"), ("series", "query")]
    assert query[0]["schema"]["pattern"] == OPTIONAL_UUID_PATTERN
    assert query[1]["schema"]["enum"] == ["", "minute"]


@pytest.mark.parametrize(("page", "marker"), [("/docs", "swagger-ui"), ("/redoc", "redoc")])
def test_the_docs_pages(client: TestClient, page: str, marker: str) -> None:
    response = client.get(page)

    assert response.status_code == 200
    assert marker in response.text.lower()


def test_the_docs_assets_ship_with_their_licences() -> None:
    static = Path(api.__file__).parent / "static"
    for name in (
        "swagger-ui/swagger-ui-bundle.js",
        "swagger-ui/swagger-ui.css",
        "swagger-ui/LICENSE",
        "swagger-ui/NOTICE",
        "redoc/redoc.standalone.js",
        "redoc/LICENSE",
    ):
        assert (static / name).is_file(), name
    pyproject = (Path(api.__file__).parents[1] / "pyproject.toml").read_text()
    assert 'api = ["static/README.md", "static/*/*"]' in pyproject


def test_the_replay_documents_its_body(document: dict[str, Any]) -> None:
    op = operation(document, "post", "/system/events/replay")
    body = op["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    responses = op["responses"]["200"]["content"]["application/json"]["schema"]

    assert body["required"] is True
    assert list(schema["properties"]) == [
        "status",
        "event_type",
        "source_module",
        "target_module",
        "entity_type",
        "retry_scheduled",
        "created_after",
        "created_before",
        "dry_run",
        "max",
    ]
    assert schema["additionalProperties"] is False  # a typo'd filter is refused
    assert schema["properties"]["created_after"]["pattern"] == TIMESTAMP_PATTERN
    assert (schema["properties"]["max"]["minimum"], schema["properties"]["max"]["maximum"]) == (
        1,
        100_000,
    )
    assert responses == {"$ref": "#/components/schemas/ReplayEnvelope"}
    envelope = document["components"]["schemas"]["ReplayEnvelope"]["properties"]
    assert list(envelope) == ["success", "message", "matched", "replayed"]


def test_the_list_documents_its_cursor(document: dict[str, Any]) -> None:
    parameters = operation(document, "get", "/system/events")["parameters"]
    cursor = next(p for p in parameters if p["name"] == "cursor")

    assert cursor["schema"]["pattern"] == CURSOR_PATTERN
    page = document["components"]["schemas"]["EventsPage"]["properties"]
    assert "null" in {t.get("type") for t in page["next_cursor"]["anyOf"]}


def test_the_cursor_schema_says_its_length(client: TestClient, token: TokenFactory) -> None:
    # Given a real cursor, from a list of two events read one at a time
    h = auth(token())
    for _ in range(2):
        client.post("/system/events", headers=h, json=SEED_PUBLISH_BODY)
    real = client.get("/system/events", headers=h, params={"limit": "1"}).json()["next_cursor"]
    parameters = client.get("/openapi.json").json()["paths"]["/system/events"]["get"]["parameters"]
    pattern = next(p for p in parameters if p["name"] == "cursor")["schema"]["pattern"]
    # Then the document takes it and no cursor: a one-letter `cursor=l`, which the API refuses,
    # is no schema-valid value any more (before: any run of base64url characters)
    assert re.fullmatch(pattern, real) and re.fullmatch(pattern, "")
    for refused in ("l", real[:-1], real + "A", real[:-1] + "B"):
        assert re.fullmatch(pattern, refused) is None, refused
        answer = client.get("/system/events", headers=h, params={"cursor": refused})
        assert answer.json() == {"success": False, "message": "Invalid cursor"}


@pytest.mark.parametrize("path", ["/system/events", "/system/events/batch"])
def test_the_reused_key_422_is_in_the_publishes_responses(
    document: dict[str, Any], path: str
) -> None:
    op = operation(document, "post", path)
    unprocessable = op["responses"]["422"]["content"]["application/json"]
    assert unprocessable["schema"] == ERROR_ENVELOPE
    assert unprocessable["example"] == {
        "success": False,
        "message": "Idempotency key reused with a different request",
    }


@pytest.mark.parametrize("method", ["get", "put"])
def test_the_event_id_is_a_canonical_uuid(document: dict[str, Any], method: str) -> None:
    path = next(
        p
        for p in operation(document, method, "/system/events/{event_id}")["parameters"]
        if p["in"] == "path"
    )
    assert path["schema"]["pattern"] == UUID_PATTERN


def test_the_detail_documents_its_bounded_history(document: dict[str, Any]) -> None:
    detail = document["components"]["schemas"]["EventDetailEnvelope"]
    assert list(detail["properties"]) == [
        "success",
        "message",
        "event",
        "attempts",
        "attempts_total",
        "next_attempt_at",
        "deliveries",
    ]
    assert "last 100" in detail["properties"]["attempts"]["description"]
