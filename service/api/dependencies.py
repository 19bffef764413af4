"""FastAPI dependencies of the admin and operations routes: the gateway, and who is calling.

They adapt FastAPI's request to the edge's own ``Request`` so auth is the same code on the
plain-ASGI hot routes and here.  They run before the body is read (admin bodies are read by
``json_body``, a dependency too), so a request without a valid token is a 401 whatever its body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Security
from fastapi import Request as FastAPIRequest
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from service import errors
from service.api.auth import require_admin, require_api_key, require_token
from service.api.http import Request, parse_json
from service.api.ops_errors import invalid_request
from service.gateway import Gateway
from service.quotas.limits import Record
from service.validation import problems

ADMIN_BODY_LIMIT = 64 * 1024
COMPONENT_REF = "#/components/schemas/{model}"
B = TypeVar("B", bound=BaseModel)

# Documents the bearer scheme in the OpenAPI document; the check itself is require_*.
bearer_scheme = HTTPBearer(auto_error=False, description="a gateway token, or an admin token")
# Anthropic's clients send the token in x-api-key (or as a bearer); the check is require_api_key.
api_key_scheme = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKey",
    auto_error=False,
    description="a gateway token, as Anthropic's clients send it (Anthropic's routes only)",
)


def gateway(request: FastAPIRequest) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(gateway)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
ApiKey = Annotated[str | None, Security(api_key_scheme)]


async def token_caller(request: FastAPIRequest, gw: GatewayDep, _: Bearer) -> Record | None:
    """The caller's token record on token routes (None when auth is off)."""
    return await require_token(gw, Request(request.scope, request.receive))


async def api_key_caller(
    request: FastAPIRequest, gw: GatewayDep, _: Bearer, __: ApiKey
) -> Record | None:
    """The caller's token record on Anthropic's routes: ``x-api-key``, else a bearer."""
    return await require_api_key(gw, Request(request.scope, request.receive))


def admin_caller(request: FastAPIRequest, gw: GatewayDep, _: Bearer) -> None:
    require_admin(gw, Request(request.scope, request.receive))


def json_body(model: type[B]) -> Callable[..., Awaitable[B]]:
    """A dependency reading the body as ``model`` (after the admin check, with a size limit)."""

    async def read(request: FastAPIRequest, _: Annotated[None, Depends(admin_caller)]) -> B:
        raw = await Request(request.scope, request.receive).body(ADMIN_BODY_LIMIT)
        data = parse_json(raw)
        if not isinstance(data, dict):
            raise errors.bad_request("Request body must be a JSON object.")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise invalid_request(problems(exc)) from None

    return read


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of a route that reads it itself."""
    return {
        "requestBody": {
            "required": True,
            # Refs point into the components; service.api.ops moves the schema there.
            "content": {
                "application/json": {"schema": model.model_json_schema(ref_template=COMPONENT_REF)}
            },
        }
    }
