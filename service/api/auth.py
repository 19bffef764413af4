"""Bearer tokens at the edge: who is calling.  The token itself is checked by the store's
admission script (hot path) or against the registry (other routes)."""

from __future__ import annotations

import hmac
import time

from service import errors
from service.api.http import Request
from service.gateway import Gateway
from service.quotas.tokens import token_id
from service.store.client import StoreError


def bearer(request: Request) -> str | None:
    value = request.header(b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def caller_id(gw: Gateway, request: Request) -> str | None:
    """The caller's token id (validated later, in the admission call); None if auth is off."""
    if not gw.tokens.auth_enabled:
        return None
    raw = bearer(request)
    if raw is None:
        gw.metrics.auth_failures.labels("missing").inc()
        raise errors.unauthorized("Missing bearer token: send 'Authorization: Bearer <token>'.")
    return token_id(raw)


async def require_token(gw: Gateway, request: Request) -> str | None:
    """Authenticate a caller on routes without quotas (models, stats)."""
    tid = caller_id(gw, request)
    if tid is None:
        return None
    try:
        fields = await gw.tokens.get(tid)
    except LookupError:
        fields = None
    except StoreError:
        raise errors.unavailable("The token registry is unreachable.") from None
    reason = None
    if fields is None:
        reason = "unknown"
    elif fields.get("revoked") == "1":
        reason = "revoked"
    elif 0 < int(fields.get("expires_ms") or 0) <= time.time() * 1000:
        reason = "expired"
    if reason is not None:
        gw.metrics.auth_failures.labels(reason).inc()
        raise errors.unauthorized(f"The API token is {reason}.")
    return tid


def require_admin(gw: Gateway, request: Request) -> None:
    if not gw.settings.admin_tokens:
        raise errors.not_found("The admin API is off: set ADMIN_TOKENS to enable it.")
    raw = bearer(request)
    if raw is None:
        gw.metrics.auth_failures.labels("missing").inc()
        raise errors.unauthorized("Missing admin bearer token.")
    presented = raw.encode()
    if not any(hmac.compare_digest(presented, t.encode()) for t in gw.settings.admin_tokens):
        gw.metrics.auth_failures.labels("admin").inc()
        raise errors.unauthorized("The admin token is not valid.")
