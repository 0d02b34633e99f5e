"""Tenants, the secret the tests' settings sign with, and tokens minted with it."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from bus.auth import mint_token

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
TENANT_A = uuid.UUID("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa")
TENANT_B = uuid.UUID("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb")

TokenFactory = Callable[..., str]


def make_token(
    tenant: uuid.UUID | None = TENANT_A,
    permissions: list[str] | None = None,
    *,
    admin: bool = False,
    system: bool = False,
    ttl: int = 3600,
    sub: str = "tester",
) -> str:
    """A token the tests' settings accept: a manage:system user of tenant A unless told."""
    return mint_token(
        TEST_SECRET,
        sub=sub,
        tenant_id=tenant,
        permissions=["manage:system"] if permissions is None else permissions,
        is_system_admin=admin,
        token_type="system" if system else "user",
        ttl_seconds=ttl,
    )


def auth(tok: str) -> dict[str, str]:
    """The Authorization header carrying ``tok``."""
    return {"Authorization": f"Bearer {tok}"}
