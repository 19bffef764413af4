"""GET /stats: fleet-wide figures per provider and model, read from the store."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.api.dependencies import GatewayDep, token_caller
from service.api.ops_errors import orjson_response
from service.api.schemas import Stats

router = APIRouter(tags=["operations"], dependencies=[Depends(token_caller)])


@router.get("/stats", response_model=Stats, summary="Fleet-wide statistics per provider/model")
async def stats(gw: GatewayDep) -> Response:
    # A store failure is the gateway's Unavailable (503), rendered by the app's one handler.
    return orjson_response(await gw.stats.snapshot())
