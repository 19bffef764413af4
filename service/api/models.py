"""GET /v1/models: every model that can be requested by id, plus the virtual model; and
GET /v1/models/{id}: one of them, with the providers serving it and their scores."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.api.dependencies import GatewayDep, token_caller
from service.api.ops_errors import orjson_response
from service.api.schemas import ErrorBody, ModelDetail, ModelList
from service.errors import model_not_found
from service.routing.table import AUTO

router = APIRouter(tags=["models"], dependencies=[Depends(token_caller)])
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No provider serves the model"}
}


@router.get("/v1/models", response_model=ModelList, summary="Every requestable model id")
@router.get("/models", response_model=ModelList, include_in_schema=True)
async def list_models(gw: GatewayDep) -> Response:
    table = gw.catalog.table
    data = [{"id": AUTO, "object": "model", "created": 0, "owned_by": "best"}]
    for model_id in table.model_ids:
        providers = [c.provider for c in table.resolve(model_id)]
        data.append(
            {
                "id": model_id,
                "object": "model",
                "created": 0,
                "owned_by": providers[0],
                "providers": providers,
            }
        )
    return orjson_response({"object": "list", "data": data})


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelDetail,
    summary="One model (the id may contain /) with the providers serving it and their scores",
    responses=_UNKNOWN,
)
@router.get(
    "/models/{model_id:path}",
    response_model=ModelDetail,
    include_in_schema=True,
    responses=_UNKNOWN,
)
async def retrieve_model(model_id: str, gw: GatewayDep) -> Response:
    table = gw.catalog.table
    found = table.exact(model_id)
    if not found and (model_id == AUTO or "/" in model_id) and "," not in model_id:
        found = table.resolve(model_id)  # the virtual model, or a provider/model pin
    if not found:
        raise model_not_found(model_id)
    now_ms = int(time.time() * 1000)
    providers = []
    for c in found:
        total = table.effective_score(c)
        until = gw.breakers.until(c, now_ms)
        providers.append(
            {
                "provider": c.provider,
                "model": c.model,
                "score": {
                    "static": round(c.score.total, 6),
                    "live": round(total - c.score.total, 6),
                    "live_factor": c.live,
                    "total": round(total, 6),
                },
                "breaker": gw.breakers.breaker_state(c),
                "provider_cooling": bool(gw.breakers.until_provider(c, now_ms)),
                "cooldown_remaining_s": round(max(0, until - now_ms) / 1000, 3),
                "latency_p95_ms": gw.stats.live.p95_ms(c.provider, c.model),
                "apis": sorted(c.apis),
            }
        )
    return orjson_response(
        {
            "id": model_id,
            "object": "model",
            "created": 0,
            "owned_by": "best" if model_id == AUTO else found[0].provider,
            "providers": providers,
        }
    )
