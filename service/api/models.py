"""GET /v1/models: every model that can be requested by id, plus the virtual model."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.api.dependencies import GatewayDep, token_caller
from service.api.responses import orjson_response
from service.api.schemas import ModelList
from service.routing.table import AUTO

router = APIRouter(tags=["models"], dependencies=[Depends(token_caller)])


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
