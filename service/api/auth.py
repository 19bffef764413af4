"""Bearer tokens at the edge: who is calling.  The token is checked (against the registry's
local cache, see quotas/tokens.py) before anything else about a request is looked at."""

from __future__ import annotations

import hmac

from service import errors
from service.api.http import Request
from service.gateway import Gateway
from service.quotas.limits import Record


def bearer(request: Request) -> str | None:
    value = request.header(b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def require_token(gw: Gateway, request: Request) -> Record | None:
    """The caller's record: an identity's (a JWT of a trusted issuer) or a token's (None when
    auth is off); raises Unauthorized, or Forbidden for an identity of an unknown team."""
    return await _caller(gw, request, bearer(request))


async def _caller(gw: Gateway, request: Request, raw: str | None) -> Record | None:
    record = await gw.identities.authenticate(raw)
    if record is None:
        record = await gw.quotas.authenticate(raw)
        gw.identities.refuse_as_token(record)
    if request.trace is not None and record is not None:
        request.trace.caller(record.id, record.team)  # the id, never the token
    return record


def api_key(request: Request) -> str | None:
    """The token of an Anthropic client: ``x-api-key`` (the SDK's ``api_key``,
    ``ANTHROPIC_API_KEY``), else a bearer token (``auth_token``, ``ANTHROPIC_AUTH_TOKEN``)."""
    value = request.header(b"x-api-key")
    token = value.decode("latin-1").strip() if value is not None else ""
    return token or bearer(request)


async def require_api_key(gw: Gateway, request: Request) -> Record | None:
    """``require_token`` for Anthropic's routes (the token, or a JWT, in ``x-api-key`` or a
    bearer)."""
    return await _caller(gw, request, api_key(request))


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
