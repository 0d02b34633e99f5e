"""Webhook signatures as a receiver checks them: signed by ``bus.webhooks.signing``, verified by
the ``standardwebhooks`` package (PyPI), an outsider's code, not the bus's."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bus.webhooks import signing

BODY = b'{"id":"0b7a3c1e-8d0e-4f6c-9a55-2f1d3c4b5a69","event_type":"inventory_updated"}'
MESSAGE_ID = "0b7a3c1e-8d0e-4f6c-9a55-2f1d3c4b5a69"


def test_a_generated_secret_is_whsec_and_24_random_bytes() -> None:
    first, second = signing.new_secret(), signing.new_secret()

    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 24
    assert signing.secret_key(first) == base64.b64decode(first[6:])


def test_the_receivers_library_verifies_a_signature() -> None:
    secret = signing.new_secret()

    headers = signing.headers(MESSAGE_ID, BODY, [secret])

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == MESSAGE_ID
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == {
        "id": MESSAGE_ID,
        "event_type": "inventory_updated",
    }


def test_a_signature_is_the_one_the_library_makes() -> None:
    secret = signing.new_secret()
    headers = signing.headers(MESSAGE_ID, BODY, [secret], timestamp=1_700_000_000)

    expected = Webhook(secret).sign(MESSAGE_ID, datetime.fromtimestamp(1_700_000_000, UTC), BODY)
    assert headers["webhook-signature"] == expected


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret"])
def test_anything_changed_fails_verification(tamper: str) -> None:
    secret = signing.new_secret()
    headers = signing.headers(MESSAGE_ID, BODY, [secret])
    body = BODY
    if tamper == "body":
        body = BODY.replace(b"inventory", b"Inventory")
    elif tamper == "id":
        headers["webhook-id"] = "another"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    else:
        secret = signing.new_secret()

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_during_a_rotation_each_secret_verifies() -> None:
    # Given an endpoint rotated from `old` to `new`: deliveries are signed with both
    old, new = signing.new_secret(), signing.new_secret()
    headers = signing.headers(MESSAGE_ID, BODY, [new, old])

    # Then two space-separated signatures, and a receiver on either secret accepts the delivery
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    # and one on a third secret does not
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, headers)


@pytest.mark.parametrize("size", range(70))
def test_a_given_secret_is_the_padded_base64_of_24_to_64_bytes(size: int) -> None:
    key = bytes(range(size))
    padded = "whsec_" + base64.b64encode(key).decode()
    unpadded = padded.rstrip("=")

    if 24 <= size <= 64:
        assert re.fullmatch(signing.SECRET_PATTERN, padded)
        assert signing.secret_key(padded) == key
        Webhook(padded).verify(BODY, signing.headers(MESSAGE_ID, BODY, [padded]))
    else:
        assert not re.fullmatch(signing.SECRET_PATTERN, padded)
        with pytest.raises(ValueError):
            signing.secret_key(padded)
    if unpadded != padded:  # the document's pattern and the parser refuse it alike
        assert not re.fullmatch(signing.SECRET_PATTERN, unpadded)
        with pytest.raises(ValueError):
            signing.secret_key(unpadded)


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        base64.b64encode(bytes(32)).decode(),  # no prefix
        "whsec_" + base64.b64encode(bytes(23)).decode(),  # too short
        "whsec_" + base64.b64encode(bytes(65)).decode(),  # too long
        "whsec_not*base64*at*all*but*long*enough*",
        "whsec_" + base64.urlsafe_b64encode(b"\xfb" * 24).decode(),  # url-safe alphabet
    ],
)
def test_other_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        signing.secret_key(secret)


def test_no_secret_no_signature() -> None:
    with pytest.raises(ValueError):
        signing.headers(MESSAGE_ID, BODY, [])
