"""/admin/tokens: token management for holders of an ADMIN_TOKENS bearer."""

from __future__ import annotations

from typing import Any

from service import errors
from service.api.auth import require_admin
from service.api.http import Request, Response, json_response
from service.gateway import Gateway
from service.quotas.tokens import to_record

ADMIN_BODY_LIMIT = 64 * 1024


async def _json_object(request: Request) -> dict[str, Any]:
    body = await request.json_body(ADMIN_BODY_LIMIT)
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    return body


async def tokens(gw: Gateway, request: Request) -> Response:
    """GET lists every token; POST creates one (the raw token is in the answer, once)."""
    require_admin(gw, request)
    if request.method == "GET":
        return json_response({"object": "list", "data": await gw.tokens.list()})
    created = await gw.tokens.create(await _json_object(request))
    return json_response(created, status=201)


async def token(gw: Gateway, request: Request, token_id: str) -> Response:
    """GET one, PATCH limits, DELETE revokes."""
    require_admin(gw, request)
    if request.method == "GET":
        return json_response(to_record(await gw.tokens.get(token_id)))
    if request.method == "PATCH":
        return json_response(await gw.tokens.update(token_id, await _json_object(request)))
    return json_response(await gw.tokens.revoke(token_id))
