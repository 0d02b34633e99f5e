"""The README's webhook receivers (``docs/webhooks/receiver.py`` and ``receiver.mjs``) run for
real: each a subprocess on a free loopback port with a secret of
:func:`bus.webhooks.signing.new_secret`, sent deliveries over HTTP signed by the bus's own
:func:`bus.webhooks.signing.headers`, in each of the three formats.

A delivery that verifies is answered 2xx and its event printed once on the receiver's stdout as
one JSON line; a tampered body, another secret, a timestamp 10 minutes away is 400 and prints
nothing. That a delivery printed nothing is read once a later good one has printed (stdout is
one pipe, read in order). The Node.js receiver is skipped only where ``node`` is not on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import HTTPMessage, to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from bus.events.schemas import encode
from bus.webhooks import signing
from tests.support.processes import BIN, ROOT, free_port, port_open, wait_for
from tests.support.tokens import TENANT_A

DOCS = ROOT / "docs" / "webhooks"
NODE = shutil.which("node")
EVENT_TYPE = "stock 100% counted — entrepôt 7"  # a ce-type header percent-encodes it
DATA = {"new_quantity": 95, "note": "entrepôt 7 — 📦"}  # non-ASCII, as the bus writes it (UTF-8)
FORMATS = ("seed", "cloudevents-structured", "cloudevents-binary")
START_TIMEOUT = 15.0
LINE_TIMEOUT = 5.0


@dataclass
class Receiver:
    """One example receiver running as a subprocess, its stdout read line by line."""

    name: str
    url: str
    secret: str
    popen: subprocess.Popen[str]
    stderr: Path
    client: httpx.Client = field(  # never through a proxy of the environment: 127.0.0.1 only
        default_factory=lambda: httpx.Client(trust_env=False, timeout=10.0)
    )
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def diagnostics(self) -> str:
        with self.changed:
            stdout = "\n".join(self.lines)
        return f"{self.name} stdout:\n{stdout}\nstderr:\n{self.stderr.read_text()[-4000:]}"

    def events(self) -> list[dict[str, Any]]:
        """Every stdout line, each one JSON object (a receiver prints nothing else there)."""
        with self.changed:
            lines = list(self.lines)
        return [json.loads(line) for line in lines]

    def wait_for_event(self, message_id: str) -> dict[str, Any]:
        def printed() -> dict[str, Any] | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"exited ({self.popen.returncode})\n{self.diagnostics()}")
            return next((e for e in self.events() if e.get("id") == message_id), None)

        try:
            found: dict[str, Any] = wait_for(printed, LINE_TIMEOUT, f"{message_id} not printed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None
        return found

    def printed(self, message_id: str) -> int:
        """How many times ``message_id`` was processed, read once a later delivery was."""
        marker = str(uuid.uuid4())
        assert deliver(self, marker).status_code == 204, self.diagnostics()
        self.wait_for_event(marker)
        return sum(e.get("id") == message_id for e in self.events())

    def stop(self) -> None:
        """Stop it by its PID: SIGTERM, SIGKILL if it lingers."""
        self.client.close()
        self.popen.terminate()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def start(name: str, argv: list[str], stderr: Path) -> Receiver:
    port = free_port()
    secret = signing.new_secret()
    env = {
        **os.environ,
        "WEBHOOK_SECRET": secret,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    with stderr.open("w") as err:
        popen = subprocess.Popen(
            argv, env=env, cwd=DOCS, stdout=subprocess.PIPE, stderr=err, encoding="utf-8"
        )
    receiver = Receiver(name, f"http://127.0.0.1:{port}/webhooks", secret, popen, stderr)
    threading.Thread(target=receiver.read, daemon=True).start()

    def listening() -> bool:
        if popen.poll() is not None:
            raise AssertionError(f"exited ({popen.returncode})\n{receiver.diagnostics()}")
        return port_open(port)

    try:
        wait_for(listening, START_TIMEOUT, f"{name} never listened on {port}")
    except BaseException:
        receiver.stop()
        raise
    return receiver


@pytest.fixture(
    scope="module",
    params=[
        "python",
        pytest.param(
            "node",
            marks=pytest.mark.skipif(
                NODE is None, reason="node is not on PATH: docs/webhooks/receiver.mjs not run"
            ),
        ),
    ],
)
def receiver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Receiver]:
    name = request.param
    if name == "python":
        argv = [str(BIN / "python"), str(DOCS / "receiver.py")]
    else:
        assert NODE is not None
        argv = [NODE, str(DOCS / "receiver.mjs")]
    running = start(name, argv, tmp_path_factory.mktemp(name) / "stderr")
    try:
        yield running
    finally:
        running.stop()


def message(message_id: str, form: str = "seed") -> tuple[bytes, dict[str, str]]:
    """A delivery's body and content headers for event ``message_id``, written as ``form``
    says: the seed's event object (compact UTF-8 JSON, as the API writes it), or a CloudEvent
    by the CloudEvents SDK, structured or binary."""
    if form == "seed":
        event = {
            "id": message_id,
            "tenant_id": str(TENANT_A),
            "event_type": EVENT_TYPE,
            "source_module": "inventory",
            "target_module": "warehouse",
            "entity_type": "inventory_item",
            "entity_id": "item-1",
            "event_data": DATA,
            "status": "pending",
            "retry_count": 0,
            "created_at": "2026-12-03T22:10:04.123456Z",
            "processed_at": None,
            "error_message": None,
        }
        return encode(event), {"content-type": "application/json"}
    cloud_event = CloudEvent(
        {
            "id": message_id,
            "source": "inventory",
            "type": EVENT_TYPE,
            "subject": "item-1",
            "time": datetime(2026, 12, 3, 22, 10, 4, 123456, tzinfo=UTC),
            "datacontenttype": "application/json",
            "targetmodule": "warehouse",
            "entitytype": "inventory_item",
            "tenantid": str(TENANT_A),
        },
        DATA,
    )
    written: HTTPMessage = (
        to_structured_event(cloud_event)
        if form == "cloudevents-structured"
        else to_binary_event(cloud_event)
    )
    return written.body, dict(written.headers)


def post(receiver: Receiver, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return receiver.client.post(receiver.url, content=body, headers=headers)


def deliver(
    receiver: Receiver,
    message_id: str,
    form: str = "seed",
    secrets: list[str] | None = None,
    timestamp: int | None = None,
) -> httpx.Response:
    """Deliver event ``message_id`` as the bus does: signed with ``secrets`` (the receiver's
    by default) by :func:`bus.webhooks.signing.headers`."""
    body, content = message(message_id, form)
    signed = signing.headers(message_id, body, secrets or [receiver.secret], timestamp)
    return post(receiver, body, {**content, **signed})


@pytest.mark.parametrize("form", FORMATS)
def test_a_delivery_signed_by_the_bus_is_answered_2xx_and_printed(
    receiver: Receiver, form: str
) -> None:
    message_id = str(uuid.uuid4())

    answer = deliver(receiver, message_id, form)

    assert answer.is_success, (answer.status_code, receiver.diagnostics())
    assert receiver.wait_for_event(message_id) == {"id": message_id, "type": EVENT_TYPE}


def test_a_tampered_body_is_400_and_not_processed(receiver: Receiver) -> None:
    # Given a delivery signed over its body
    message_id = str(uuid.uuid4())
    body, content = message(message_id)
    signed = signing.headers(message_id, body, [receiver.secret])
    # When one byte of the body changes on the way (95 -> 96)
    tampered = body.replace(b'"new_quantity":95', b'"new_quantity":96')
    assert tampered != body

    answer = post(receiver, tampered, {**content, **signed})

    assert answer.status_code == 400
    assert receiver.printed(message_id) == 0


def test_a_body_read_again_as_json_is_not_the_body_signed(receiver: Receiver) -> None:
    """A receiver verifies the raw bytes: the same JSON written otherwise (spaces, \\u escapes)
    is another body, so a signature over the bytes the bus sent does not match it."""
    message_id = str(uuid.uuid4())
    body, content = message(message_id)
    signed = signing.headers(message_id, body, [receiver.secret])
    rewritten = json.dumps(json.loads(body)).encode()
    assert rewritten != body

    assert post(receiver, rewritten, {**content, **signed}).status_code == 400
    assert receiver.printed(message_id) == 0


def test_another_secret_is_400(receiver: Receiver) -> None:
    message_id = str(uuid.uuid4())

    answer = deliver(receiver, message_id, secrets=[signing.new_secret()])

    assert answer.status_code == 400
    assert receiver.printed(message_id) == 0


@pytest.mark.parametrize("headers", ["none", "no-signature", "another-version"])
def test_a_delivery_without_a_v1_signature_is_400(receiver: Receiver, headers: str) -> None:
    message_id = str(uuid.uuid4())
    body, content = message(message_id)
    signed = signing.headers(message_id, body, [receiver.secret])
    if headers == "none":
        signed = {}
    elif headers == "no-signature":
        del signed[signing.SIGNATURE_HEADER]
    else:  # the same digest under a version the receiver does not know
        signed[signing.SIGNATURE_HEADER] = "v2" + signed[signing.SIGNATURE_HEADER][2:]

    assert post(receiver, body, {**content, **signed}).status_code == 400
    assert receiver.printed(message_id) == 0


@pytest.mark.parametrize("offset", [-600, 600], ids=["10-minutes-old", "10-minutes-ahead"])
def test_a_timestamp_10_minutes_away_is_400(receiver: Receiver, offset: int) -> None:
    # Given a delivery correctly signed, but at a timestamp 10 minutes from now
    message_id = str(uuid.uuid4())

    answer = deliver(receiver, message_id, timestamp=int(time.time()) + offset)

    assert answer.status_code == 400
    assert receiver.printed(message_id) == 0


def test_a_timestamp_4_minutes_old_is_within_the_tolerance(receiver: Receiver) -> None:
    message_id = str(uuid.uuid4())

    answer = deliver(receiver, message_id, timestamp=int(time.time()) - 240)

    assert answer.is_success, (answer.status_code, receiver.diagnostics())
    receiver.wait_for_event(message_id)


@pytest.mark.parametrize("knows", ["new", "old"])
def test_during_a_rotation_either_secret_verifies(receiver: Receiver, knows: str) -> None:
    # Given a rotation: deliveries are signed with the new secret, then the previous one
    other = signing.new_secret()
    secrets = [receiver.secret, other] if knows == "new" else [other, receiver.secret]
    message_id = str(uuid.uuid4())

    answer = deliver(receiver, message_id, secrets=secrets)

    # Then a receiver that knows only one of them (the new one, or still the old one) takes it
    assert answer.is_success, (answer.status_code, receiver.diagnostics())
    receiver.wait_for_event(message_id)


def test_a_delivery_sent_again_is_answered_2xx_and_processed_once(receiver: Receiver) -> None:
    # Given a delivery processed
    message_id = str(uuid.uuid4())
    first = deliver(receiver, message_id, timestamp=int(time.time()) - 1)
    assert first.is_success, (first.status_code, receiver.diagnostics())
    receiver.wait_for_event(message_id)

    # When the bus sends it again (its answer lost): the same webhook-id, a new timestamp
    again = deliver(receiver, message_id)

    # Then it is answered 2xx, so the bus stops, and not processed a second time
    assert again.is_success, (again.status_code, receiver.diagnostics())
    assert receiver.printed(message_id) == 1
