"""The OpenAPI document tells the truth: the seed's three operations and the stats of issue 5,
bearer auth, envelopes for errors. Probes and /metrics stay out of it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

OPERATIONS = {
    ("get", "/system/events"): ("List Events", {"200", "400", "401", "403", "500"}),
    ("post", "/system/events"): ("Publish Event", {"201", "400", "401", "403", "413", "500"}),
    ("put", "/system/events/{event_id}"): (
        "Update Event Status",
        {"200", "400", "401", "403", "404", "413", "500"},
    ),
    ("get", "/system/events/stats"): ("Event Stats", {"200", "400", "401", "403", "500"}),
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
    assert set(op["responses"]) == codes  # no 422: the API never answers one


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
    }
    page = document["components"]["schemas"]["EventsPage"]["properties"]
    assert set(page) == {"success", "message", "events", "page", "limit", "total"}
    event = document["components"]["schemas"]["Event"]["properties"]
    assert list(event) == [
        "id",
        "tenant_id",
        "event_type",
        "source_module",
        "target_module",
        "entity_type",
        "entity_id",
        "event_data",
        "status",
        "retry_count",
        "created_at",
        "processed_at",
        "error_message",
    ]


def test_the_request_bodies(document: dict[str, Any]) -> None:
    def body_of(method: str, path: str) -> dict[str, Any]:
        body = operation(document, method, path)["requestBody"]
        assert body["required"] is True
        return body["content"]["application/json"]["schema"]  # type: ignore[no-any-return]

    publish = body_of("post", "/system/events")
    assert publish["required"] == [
        "event_type",
        "source_module",
        "target_module",
        "entity_type",
        "entity_id",
        "event_data",
    ]
    assert publish["properties"]["event_data"]["type"] == "object"
    update = body_of("put", "/system/events/{event_id}")
    assert update["required"] == ["status"]
    assert update["properties"]["status"]["enum"] == ["pending", "processed", "failed"]
    assert "requestBody" not in operation(document, "get", "/system/events")


def test_the_list_documents_its_query(document: dict[str, Any]) -> None:
    names = [p["name"] for p in operation(document, "get", "/system/events")["parameters"]]

    assert names == [
        "tenant_id",
        "event_type",
        "source_module",
        "target_module",
        "status",
        "entity_type",
        "page",
        "limit",
    ]


def test_the_docs_page(client: TestClient) -> None:
    response = client.get("/docs")

    assert response.status_code == 200
    assert "swagger-ui" in response.text.lower()
