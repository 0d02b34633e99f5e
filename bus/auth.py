"""Bearer JWTs: verification, the caller's identity, and who may do what in which tenant."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bus.errors import (
    AuthenticationRequired,
    FieldRequired,
    InsufficientPermissions,
    InvalidToken,
)
from bus.events.schemas import (
    parse_uuid,
)
from bus.observability import logs
from bus.settings import Settings

MANAGE_SYSTEM = "manage:system"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, from the token's claims."""

    sub: str
    tenant_id: uuid.UUID | None
    permissions: frozenset[str]
    is_system_admin: bool
    token_type: str

    @property
    def can_read(self) -> bool:
        return self.is_system_admin or MANAGE_SYSTEM in self.permissions

    @property
    def can_write(self) -> bool:
        return self.can_read or self.token_type == "system"


class TokenVerifier:
    """Verifies tokens with the one key the settings name; the token's header never picks it."""

    def __init__(self, settings: Settings) -> None:
        self._options: dict[str, Any] = {"require": ["exp", "sub"]}
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._max_lifetime = settings.jwt_max_lifetime_seconds
        if settings.jwt_public_key:
            key = load_pem_public_key(settings.jwt_public_key.encode())
            if isinstance(key, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(key, ec.EllipticCurvePublicKey):
                self._algorithms = ["ES256"]
            else:
                raise ValueError("EVENTBUS_JWT_PUBLIC_KEY must be an RSA or EC public key")
            self._key: Any = key
        else:
            self._algorithms = ["HS256"]
            self._key = settings.signing_secret()
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, authorization: str | None) -> Principal:
        """The caller named by an ``Authorization: Bearer …`` header, or 401."""
        if not authorization:
            raise AuthenticationRequired()
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationRequired()
        # A client sends the same token with every request: its signature and claims, once
        # verified, stay verified; only its expiry is checked again (as jwt.decode does: valid
        # while now < exp). A verification costs more CPU than the rest of a publish's auth.
        known = self._verified.get(token)
        if known is not None:
            if time.time() < known[1]:
                return known[0]
            self._verified.pop(token, None)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                options={  # type: ignore[arg-type]
                    **self._options,
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken() from exc
        self._check_times(claims)
        principal = principal_from_claims(claims)
        if len(self._verified) >= _VERIFIED_TOKENS_KEPT:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    def _check_times(self, claims: dict[str, Any]) -> None:
        """``exp``/``nbf``/``iat`` are JSON numbers (PyJWT also takes ``"9999999999"``, and
        ``true`` as 1), and a token lives at most ``EVENTBUS_JWT_MAX_LIFETIME_SECONDS``."""
        for name in _TIME_CLAIMS:
            value = claims.get(name)
            if name in claims and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise InvalidToken()
        if self._max_lifetime and claims["exp"] - claims.get("iat", time.time()) > (
            self._max_lifetime
        ):
            raise InvalidToken()


_TIME_CLAIMS = ("exp", "nbf", "iat")
_VERIFIED_TOKENS_KEPT = 4096


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Claims of a verified token; a claim of the wrong shape makes the token invalid."""
    sub = claims.get("sub")
    tenant = claims.get("tenant_id")
    permissions = claims.get("permissions", [])
    is_admin = claims.get("is_system_admin", False)
    token_type = claims.get("token_type", "user")
    if (
        not isinstance(sub, str)
        or not sub.strip()
        or not isinstance(permissions, list)
        or not all(isinstance(p, str) for p in permissions)
        or not isinstance(is_admin, bool)
        or token_type not in ("user", "system")
        or (tenant is not None and not isinstance(tenant, str))
    ):
        raise InvalidToken()
    try:
        tenant_id = uuid.UUID(tenant) if tenant else None
    except ValueError as exc:
        raise InvalidToken() from exc
    return Principal(
        sub=sub,
        tenant_id=tenant_id,
        permissions=frozenset(permissions),
        is_system_admin=is_admin,
        token_type=token_type,
    )


def require_reader(principal: Principal) -> None:
    if not principal.can_read:
        raise InsufficientPermissions()


def require_writer(principal: Principal) -> None:
    if not principal.can_write:
        raise InsufficientPermissions()


def resolve_tenant(
    principal: Principal, requested: str | None, *, creating: bool
) -> uuid.UUID | None:
    """The tenant a call acts in; a caller that is not a system admin stays in its own.

    ``None`` means every tenant: a system admin reading or updating without naming one. A new
    event needs a tenant, from the query or else the admin's token.
    """
    tenant = parse_uuid(requested, "tenant_id") if requested else None
    if principal.is_system_admin:
        if tenant is None and creating:
            tenant = principal.tenant_id
            if tenant is None:
                raise FieldRequired("tenant_id")
        return tenant
    if principal.tenant_id is None or (tenant is not None and tenant != principal.tenant_id):
        raise InsufficientPermissions()
    return principal.tenant_id


def mint_token(
    secret: str,
    *,
    sub: str,
    tenant_id: uuid.UUID | None = None,
    permissions: Iterable[str] = (),
    is_system_admin: bool = False,
    token_type: str = "user",
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 token for development and tests."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "exp": now + ttl_seconds,
        "permissions": list(permissions),
        "is_system_admin": is_system_admin,
        "token_type": token_type,
    }
    if tenant_id is not None:
        claims["tenant_id"] = str(tenant_id)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def acting_tenant(
    principal: Principal, requested: str | None, *, creating: bool
) -> uuid.UUID | None:
    """:func:`bus.auth.resolve_tenant`, and the tenant named in the logs of the call from here."""
    tenant_id = resolve_tenant(principal, requested, creating=creating)
    logs.bind(tenant_id=tenant_id)
    return tenant_id
