"""Hand-made JWTs for attacks PyJWT refuses to produce (alg none, HS256 keyed with a PEM)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from tests.support.tokens import TENANT_A


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims of a valid manage:system user of tenant A; a value of None drops the claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": "tester",
        "iat": now,
        "exp": now + 3600,
        "tenant_id": str(TENANT_A),
        "permissions": ["manage:system"],
        "is_system_admin": False,
        "token_type": "user",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )


def hs256(payload: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """Signed with HMAC-SHA256 whatever the key looks like (PyJWT refuses PEM-shaped keys);
    ``alg`` is only the header's claim."""
    return _hmac_signed(payload, secret, alg, hashlib.sha256)


def hs512(payload: dict[str, Any], secret: bytes) -> str:
    return _hmac_signed(payload, secret, "HS512", hashlib.sha512)


def _hmac_signed(payload: dict[str, Any], secret: bytes, alg: str, digest: Any) -> str:
    signing_input = _segments({"alg": alg, "typ": "JWT"}, payload)
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    """``alg: none``: no signature at all."""
    return _segments({"alg": alg, "typ": "JWT"}, payload) + "."


def with_payload(token: str, payload: dict[str, Any]) -> str:
    """The token's header and signature around another payload."""
    header, _, signature = token.split(".")
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    return f"{header}.{body}.{signature}"
