"""The hot routes (chat, embeddings, responses, completions, Anthropic's messages) as the
OpenAPI document shows them.

``service.app.App`` serves these paths itself, in plain ASGI, and never hands them to the
FastAPI app; the routes below exist so that ``/openapi.json`` documents every route.  Their
bodies are checked by hand (``service.api.chat``, ``completions``, ``responses``,
``service.anthropic.request``), not by these models.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter, Depends

from service.api.dependencies import api_key_caller, body_doc, token_caller
from service.api.schemas import (
    AnthropicErrorBody,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingList,
    EmbeddingsRequest,
    ErrorBody,
    MessageAnswer,
    MessagesRequest,
    ResponseObject,
    ResponseRequest,
    TextCompletion,
    TokenCount,
)
from service.apis import Api
from service.errors import InternalError

router = APIRouter(dependencies=[Depends(token_caller)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in [
        (400, "Invalid JSON or a malformed request"),
        (401, "Missing, unknown, revoked or expired token"),
        (404, "No provider serves the model"),
        (413, "Body over MAX_BODY_BYTES"),
        (429, "Quota exceeded, or every candidate cooling (Retry-After)"),
        (502, "Every upstream attempt failed"),
        (503, "No provider usable, or every candidate's breaker open (Retry-After)"),
        (504, "Every upstream attempt timed out"),
    ]
}


def _event(data: str, event: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``text/event-stream`` answer; its schema describes one event (OpenAPI 3.1 has no
    ``itemSchema``, so ``schema`` is per event, as tools reading 3.1 documents assume)."""
    properties: dict[str, Any] = {"data": {"type": "string", "description": data}}
    if event is not None:
        properties["event"] = event
    return {
        "text/event-stream": {
            "schema": {"type": "object", "properties": properties, "required": ["data"]}
        }
    }


_SSE = _event("a JSON chunk, then the literal [DONE]")


async def _served_by_the_plain_edge() -> NoReturn:
    raise InternalError("This route is served by the plain ASGI edge.")


for _path in ("/v1/chat/completions", "/chat/completions"):
    router.add_api_route(
        _path,
        _served_by_the_plain_edge,
        methods=["POST"],
        tags=[Api.CHAT],
        summary="Chat completion, JSON or SSE (`stream: true`), routed and failed over",
        response_model=ChatCompletion,
        responses={**_ERRORS, 200: {"content": _SSE}},
        openapi_extra=body_doc(ChatCompletionRequest),
        include_in_schema=True,
        operation_id=f"chat_completions{'_v1' if _path.startswith('/v1') else ''}",
    )

for _path in ("/v1/embeddings", "/embeddings"):
    router.add_api_route(
        _path,
        _served_by_the_plain_edge,
        methods=["POST"],
        tags=[Api.EMBEDDINGS],
        summary="Embeddings, routed by exact model id",
        response_model=EmbeddingList,
        responses=_ERRORS,
        openapi_extra=body_doc(EmbeddingsRequest),
        operation_id=f"embeddings{'_v1' if _path.startswith('/v1') else ''}",
    )

_EVENTS = _event(
    "the event's JSON object; no [DONE]",
    {
        "type": "string",
        "description": "response.created ... response.completed (or response.failed, "
        "response.incomplete, error)",
    },
)
router.add_api_route(
    "/v1/responses",
    _served_by_the_plain_edge,
    methods=["POST"],
    tags=[Api.RESPONSES],
    summary="Responses API, JSON or typed SSE events; a follow-up (previous_response_id) "
    "goes to the provider holding the conversation",
    response_model=ResponseObject,
    responses={**_ERRORS, 200: {"content": _EVENTS}},
    openapi_extra=body_doc(ResponseRequest),
    operation_id="create_response",
)

for _path in ("/v1/completions", "/completions"):
    router.add_api_route(
        _path,
        _served_by_the_plain_edge,
        methods=["POST"],
        tags=[Api.COMPLETIONS],
        summary="Legacy text completion, JSON or SSE, routed and failed over",
        response_model=TextCompletion,
        responses={**_ERRORS, 200: {"content": _SSE}},
        openapi_extra=body_doc(CompletionRequest),
        operation_id=f"completions{'_v1' if _path.startswith('/v1') else ''}",
    )


# -- Anthropic's Messages API ----------------------------------------------------------------

# Documented only: service.api.ops adds these routes to the document, not to the FastAPI app,
# whose router would otherwise answer /v1/messages/ with a redirect to /v1/messages (today a
# 404).
anthropic_router = APIRouter(dependencies=[Depends(api_key_caller)])

# Anthropic's error shape, with the other routes' statuses except 529 for providers' rate
# limits and open breakers (service.api.errors).
_ANTHROPIC_CAUSES = {
    400: "invalid_request_error: invalid JSON, a malformed request (`message` names the "
    "field), content a translation cannot carry (an image from the Files API, a document by "
    "URL), or the provider refused the request (its 4xx and message relayed)",
    401: "authentication_error: missing, unknown, revoked or expired token",
    403: "permission_error: an identity's team is not a team of this gateway",
    404: "not_found_error: no provider serves the model, even through an alias",
    413: "request_too_large: body over MAX_BODY_BYTES",
    429: "rate_limit_error: the caller's own quota or budget (Retry-After)",
    502: "api_error: every upstream attempt failed",
    503: "api_error: no provider usable, or the store unreachable (Retry-After)",
    504: "api_error: every upstream attempt timed out",
    529: "overloaded_error: every candidate rate limited by its provider, cooling down, or "
    "its breaker open (Retry-After)",
}
_MESSAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicErrorBody, "description": what}
    for status, what in _ANTHROPIC_CAUSES.items()
}
# A count is never refused for its model, a quota or a provider: no 404, 429, 502, 504, 529.
_COUNT_ERRORS: dict[int | str, dict[str, Any]] = {
    **{status: _MESSAGE_ERRORS[status] for status in (400, 401, 403, 413)},
    503: {
        "model": AnthropicErrorBody,
        "description": "api_error: the store unreachable, so the token cannot be checked",
    },
}
_NAMED_EVENTS = _event(
    "the event's JSON object, its `type` the event's name; no [DONE]",
    {
        "type": "string",
        "enum": [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
        ],
        "description": "message_start, each content block (start, deltas, stop), "
        "message_delta (stop reason, usage), message_stop; error ends a stream that broke",
    },
)
anthropic_router.add_api_route(
    "/v1/messages",
    _served_by_the_plain_edge,
    methods=["POST"],
    tags=[Api.MESSAGES],
    summary="Anthropic's Messages API, JSON or SSE (`stream: true`), routed and failed over; "
    "passed through to a provider speaking it, translated for the others",
    response_model=MessageAnswer,
    responses={**_MESSAGE_ERRORS, 200: {"content": _NAMED_EVENTS}},
    openapi_extra=body_doc(MessagesRequest),
    operation_id="create_message",
)
anthropic_router.add_api_route(
    "/v1/messages/count_tokens",
    _served_by_the_plain_edge,
    methods=["POST"],
    tags=[Api.MESSAGES],
    summary="A Messages request's input tokens: a native provider's count, else the "
    "gateway's estimate; no quota used, and an unknown model counted too",
    response_model=TokenCount,
    responses=_COUNT_ERRORS,
    openapi_extra=body_doc(CountTokensRequest),
    operation_id="count_message_tokens",
)
