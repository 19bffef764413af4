"""The OpenAI Responses API: ``POST /v1/responses`` (a hot route, plain ASGI) routed like chat
among the providers that serve it, and the calls about a stored response (``GET``,
``DELETE``, ``input_items``, ``cancel``; FastAPI routes), which go to the provider holding it.

A response id is recorded (``routing/conversations.py``) before the answer, or the stream's
first event, reaches the client; a follow-up (``previous_response_id``) goes to the recorded
provider and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path
from fastapi import Request as FastAPIRequest
from fastapi.responses import Response as FastAPIResponse

from service import errors
from service.api.auth import require_token
from service.api.calls import (
    finish_failed,
    int_field,
    model_field,
    open_call,
    relayed,
    served_headers,
    stream_field,
)
from service.api.dependencies import GatewayDep, token_caller
from service.api.errors import responses_error_event
from service.api.http import SSE_HEADERS, Request, Response, StreamResponse, parse_json
from service.api.schemas import ErrorBody, InputItemList, ResponseDeleted, ResponseObject
from service.apis import Api
from service.gateway import Gateway
from service.quotas.limits import estimate
from service.routing.conversations import RESPONSE_ID_PATTERN, RESPONSES, provider_unavailable
from service.routing.relay import Relay
from service.routing.router import Completion, OnOpen
from service.routing.table import Candidate

# Failures of the one provider holding a conversation: answered as 503 naming it.
_UNREACHABLE = (
    errors.UpstreamFailed,
    errors.UpstreamTimeout,
    errors.ProvidersRateLimited,
    errors.Unavailable,
)


def validate_response(body: Any) -> tuple[str, bool, str | None]:
    """Checks the gateway can make; returns (model, stream, previous_response_id)."""
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    model = model_field(body)
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous.strip()):
        raise errors.bad_request(
            "'previous_response_id' must be a non-empty string.", param="previous_response_id"
        )
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, dict):
        raise errors.bad_request(
            "'prompt' must be an object (a stored prompt: id, version, variables).",
            param="prompt",
        )
    data = body.get("input")
    if data is None:
        if previous is None and prompt is None:
            raise errors.bad_request("'input' is required.", param="input")
    elif isinstance(data, str):
        pass
    elif not isinstance(data, list) or not all(isinstance(item, dict | str) for item in data):
        raise errors.bad_request(
            "'input' must be a string or an array of input items.", param="input"
        )
    stream = stream_field(body)
    int_field(body, "max_output_tokens")
    return model, stream, previous.strip() if previous is not None else None


async def create_response(gw: Gateway, request: Request) -> Response | StreamResponse:
    token = await require_token(gw, request)  # before anything about the request is read
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model, stream, previous = validate_response(body)
    pinned: list[Candidate] | None = None
    if previous is not None:
        provider, recorded = await gw.conversations.owner(previous, "previous_response_id")
        candidate = gw.conversations.candidate(previous, provider, recorded, model)
        gw.conversations.check_available(previous, candidate)
        pinned = [candidate]
    call, candidates = await open_call(
        gw, request, token, model, estimate(body, len(raw)), RESPONSES, pinned
    )
    try:
        if stream:
            opened = await gw.router.stream(
                call, body, candidates, True, api=RESPONSES, on_open=_recorder(gw)
            )
            if isinstance(opened, Completion):
                return relayed(opened, call)
            headers = [*SSE_HEADERS, *served_headers(call)]
            return StreamResponse(
                200, opened, headers, call=call, error_event=responses_error_event
            )
        result = await gw.router.complete(call, body, candidates, api=RESPONSES)
        if result.status == 200 and call.candidate is not None:
            await gw.conversations.record(_id_of(result.body), call.candidate)
        return relayed(result, call)
    except _UNREACHABLE as exc:
        if previous is None or pinned is None:
            finish_failed(call, exc)
            raise
        unreachable = provider_unavailable(
            pinned[0].provider, previous, exc.message, exc.retry_after_s
        )
        finish_failed(call, unreachable)
        raise unreachable from None
    except BaseException as exc:
        finish_failed(call, exc)
        raise


def _recorder(gw: Gateway) -> OnOpen:
    async def record(candidate: Candidate, relay: Relay) -> None:
        await gw.conversations.record(relay.response_id, candidate)

    return record


def _id_of(body: bytes) -> str | None:
    parsed = orjson.loads(body)  # the router checked it is a response object with an id
    response_id = parsed.get("id")
    return response_id if isinstance(response_id, str) else None


# -- stored responses (FastAPI) -----------------------------------------------------------------

router = APIRouter(tags=[Api.RESPONSES], dependencies=[Depends(token_caller)])
ResponseId = Annotated[
    str, Path(pattern=RESPONSE_ID_PATTERN, description="a response id (resp_...)")
]
_STORED_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorBody,
        "description": "No response with this id was answered through the gateway",
    },
    503: {
        "model": ErrorBody,
        "description": "The provider holding the response cannot be reached (named)",
    },
}


async def _at_holder(
    gw: Gateway, request: FastAPIRequest, response_id: str, suffix: str
) -> FastAPIResponse:
    """The call relayed to the provider holding ``response_id``, its answer as is."""
    provider, model = await gw.conversations.owner(response_id)
    candidate = gw.conversations.candidate(response_id, provider, model)
    answer = await gw.conversations.forward(
        candidate, request.method, response_id, suffix, request.scope.get("query_string", b"")
    )
    headers = {"x-best-provider": candidate.provider, "x-best-model": candidate.model}
    media = (answer.content_type or b"application/json").decode("latin-1")
    return FastAPIResponse(answer.body, answer.status, headers=headers, media_type=media)


@router.get(
    "/v1/responses/{response_id}",
    response_model=ResponseObject,
    responses=_STORED_ERRORS,
    summary="A stored response, from the provider holding it",
)
async def retrieve_response(
    response_id: ResponseId, request: FastAPIRequest, gw: GatewayDep
) -> FastAPIResponse:
    return await _at_holder(gw, request, response_id, "")


@router.delete(
    "/v1/responses/{response_id}",
    response_model=ResponseDeleted,
    responses=_STORED_ERRORS,
    summary="Delete a stored response at the provider holding it",
)
async def delete_response(
    response_id: ResponseId, request: FastAPIRequest, gw: GatewayDep
) -> FastAPIResponse:
    return await _at_holder(gw, request, response_id, "")


@router.get(
    "/v1/responses/{response_id}/input_items",
    response_model=InputItemList,
    responses=_STORED_ERRORS,
    summary="The input items of a stored response (query: after, limit, order, include)",
)
async def response_input_items(
    response_id: ResponseId, request: FastAPIRequest, gw: GatewayDep
) -> FastAPIResponse:
    return await _at_holder(gw, request, response_id, "/input_items")


@router.post(
    "/v1/responses/{response_id}/cancel",
    response_model=ResponseObject,
    responses=_STORED_ERRORS,
    summary="Cancel a background response at the provider holding it",
)
async def cancel_response(
    response_id: ResponseId, request: FastAPIRequest, gw: GatewayDep
) -> FastAPIResponse:
    return await _at_holder(gw, request, response_id, "/cancel")
