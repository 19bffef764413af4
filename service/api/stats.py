"""GET /stats: fleet-wide figures per provider and model, read from the store."""

from __future__ import annotations

from service import errors
from service.api.auth import require_token
from service.api.http import Request, Response, json_response
from service.gateway import Gateway
from service.store.client import StoreError


async def stats(gw: Gateway, request: Request) -> Response:
    await require_token(gw, request)
    try:
        document = await gw.stats.snapshot()
    except StoreError as exc:
        raise errors.unavailable(f"Statistics are unavailable: {exc}") from None
    return json_response(document)
