"""GET /v1/models: every model that can be requested by id, plus the virtual model."""

from __future__ import annotations

from service.api.auth import require_token
from service.api.http import Request, Response, json_response
from service.gateway import Gateway
from service.routing.table import AUTO


async def list_models(gw: Gateway, request: Request) -> Response:
    await require_token(gw, request)
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
    return json_response({"object": "list", "data": data})
