"""Schemathesis against the app's own OpenAPI document (``/openapi.json``): requests generated
from it, valid and invalid, sent with a token that reaches the handlers. No 500 ever, the
responses match the document, and every error is ``{"success": false, "message": ...}``.

Bounded: ``EXAMPLES`` generated requests per operation, mode and caller. Then the CLI the way
an auditor runs it, ``--checks all`` through the examples, coverage, fuzzing and stateful phases,
against a real ``eventbus api`` process (``CLI_EXAMPLES`` per operation, at most
``CLI_BUDGET_SECONDS``).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth

from api.app import create_app
from bus.runtime import Runtime
from tests.support.factories import make_event
from tests.support.processes import ROOT, Proc, eventbus, eventbus_env, free_port
from tests.support.services import make_settings
from tests.support.tokens import TENANT_A, TENANT_B, TokenFactory, auth

EXAMPLES = 40
OPERATIONS = [
    ("/system/events", "GET"),
    ("/system/events", "POST"),
    ("/system/events/{event_id}", "PUT"),
    ("/system/events/{event_id}", "GET"),
    ("/system/events/stats", "GET"),
    ("/system/events/replay", "POST"),
    ("/system/endpoints", "GET"),
    ("/system/endpoints/{endpoint_id}/deliveries", "GET"),
]
CALLERS = ("manager of tenant A", "system admin")


def check_envelope(response: Any) -> None:
    """An error response is exactly the envelope."""
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"success", "message"}, body
        assert body["success"] is False, body
        assert isinstance(body["message"], str) and body["message"], body


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_generated_requests(
    runtime: Runtime, token: TokenFactory, path: str, method: str, mode: GenerationMode, caller: str
) -> None:
    # Given the app's own document, an event to aim PUTs at, and a caller that gets in
    app = create_app(runtime=runtime)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    known = make_event(runtime, tenant_id=TENANT_A)
    # (an admin whose token names a tenant: without one a POST must name it, README)
    tok = token(TENANT_A) if caller == CALLERS[0] else token(TENANT_B, [], admin=True)
    # (a header schemathesis knows of: it does not count a request without it as invalid)
    schema.config.update(headers=auth(tok))
    operation = schema[path][method]
    outcomes: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if mode is GenerationMode.POSITIVE and case.query:
            # A cursor is a signed value no schema can generate (tests/contract/test_cursor.py)
            case.query.pop("cursor", None)
        if case.headers:
            # Generated Idempotency-Keys repeat across different generated bodies, which is a
            # 422 by design (tests/contract/test_idempotency.py covers keys); without them the
            # publishes are checked as before
            case.headers.pop("Idempotency-Key", None)
            if not case.headers:
                # (an empty dict reads to schemathesis' ignored_auth as auth it generated)
                case.headers = None
        if (
            mode is GenerationMode.POSITIVE
            and case.media_type == "application/cloudevents+json"
            and isinstance(case.body, dict)
        ):
            # A CloudEvent's source + id is its publish's key, and generated ids repeat across
            # different generated bodies: the same 422 by design, so each gets an id of its own
            # (tests/contract/test_cloudevents_in.py covers the key)
            case.body["id"] = str(uuid.uuid4())
        if method == "PUT" and case.path_parameters and len(outcomes) % 2 == 0:
            case.path_parameters["event_id"] = str(known["id"])  # reach the update itself too
        # When it is sent with the caller's token
        response = case.call()
        outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
        # Then it is no server error, it matches the document (every check: what the document
        # allows is accepted, what it refuses is refused), and errors are the envelope
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        # (ignored_auth misreads the configured token as generated auth on operations with a
        # header parameter, the publishes' Idempotency-Key: their auth is the auth matrix's,
        # tests/contract/test_auth_matrix.py)
        excluded = [ignored_auth] if method == "POST" else None
        case.validate_response(response, excluded_checks=excluded)
        check_envelope(response)

    run()
    print(f"{method} {path} {mode.value} as {caller}: {dict(sorted(outcomes.items()))}")


# --- The CLI: every check and every phase, against a real `eventbus api` -----------------------

CLI_EXAMPLES = 25
CLI_BUDGET_SECONDS = 40


@pytest.fixture
def api_process(database_url: str) -> Iterator[str]:
    settings = make_settings(database_url)
    port = free_port()
    proc = Proc(eventbus("api", "--host", "127.0.0.1", "--port", str(port)), eventbus_env(settings))
    try:
        proc.wait_for_output("Uvicorn running on", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_every_check_and_phase_against_a_real_api(
    api_process: str, token: TokenFactory, tmp_path: Path
) -> None:
    # Given the API's own document, served by a real process, and a caller that gets in
    argv = [
        str(ROOT / ".venv" / "bin" / "schemathesis"),
        "run",
        f"{api_process}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--header",
        f"Authorization: Bearer {token(TENANT_A)}",
        "--max-examples",
        str(CLI_EXAMPLES),
        "--max-time",
        str(CLI_BUDGET_SECONDS),
        "--request-timeout",
        "10",
    ]
    # (a list cursor is a signed value no schema can generate: the CLI sends none, see
    # tests/contract/test_cursor.py; the config is read from the CLI's cwd)
    # A reused Idempotency-Key is a documented 422 of a valid request (the document's example
    # says which): the publishes expect it beside the default answers to valid data.
    accepted = '["2xx", "401", "403", "404", "409", "422"]'
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\n"query.cursor" = ""\n'
        + "".join(
            f'\n[[operations]]\ninclude-name = "{name}"\n'
            f"checks.positive_data_acceptance.expected-statuses = {accepted}\n"
            for name in ("POST /system/events", "POST /system/events/batch")
        )
        # Whether a webhook endpoint's URL is taken depends on what its host resolves to
        # (bus/webhooks/urls.py), which no schema can say: a valid body may be a 400 there.
        + "".join(
            f'\n[[operations]]\ninclude-name = "{name}"\n'
            'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", '
            '"404"]\n'
            for name in ("POST /system/endpoints", "PUT /system/endpoints/{endpoint_id}")
        )
    )
    # When schemathesis runs every check through every phase (its seed is in the output): once
    # over every operation but the two publishes, once over those with every check but one: a
    # generated header makes schemathesis take the configured token for generated auth
    # (ignored_auth; the auth matrix covers it). A generated Idempotency-Key repeats across
    # different generated bodies, the 422 the config above expects (before, the publishes ran
    # without positive_data_acceptance); tests/contract/test_idempotency.py covers the keys.
    publishes = [
        "--include-name",
        "POST /system/events",
        "--include-name",
        "POST /system/events/batch",
    ]
    for extra in (
        ["--exclude-name", "POST /system/events", "--exclude-name", "POST /system/events/batch"],
        [*publishes, "--exclude-checks", "ignored_auth"],
    ):
        run = subprocess.run(  # in tmp_path: the CLI keeps its .schemathesis/ state in its cwd
            [*argv, *extra],
            capture_output=True,
            text=True,
            timeout=CLI_BUDGET_SECONDS + 60,
            check=False,
            cwd=tmp_path,
        )
        # Then it finds nothing: the document says exactly what the API accepts
        summary = run.stdout[-6000:]
        print(summary)
        assert run.returncode == 0, summary
        assert "No issues found" in run.stdout or " passed" in run.stdout, summary
