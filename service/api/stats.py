"""GET /stats: fleet-wide figures per provider and model, read from the store."""

from __future__ import annotations

from service.api.auth import require_token
from service.api.http import Request, Response, json_response
from service.gateway import Gateway


async def stats(gw: Gateway, request: Request) -> Response:
    await require_token(gw, request)
    return json_response(await gw.stats.snapshot())
