"""The hot routes (chat, embeddings, responses, completions) as the OpenAPI document shows them.

``service.app.App`` serves these paths itself, in plain ASGI, and never hands them to the
FastAPI app; the routes below exist so that ``/openapi.json`` documents every route.  Their
bodies are checked by hand (``service.api.chat``, ``completions``, ``responses``), not by
these models.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter, Depends

from service.api.dependencies import body_doc, token_caller
from service.api.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingsRequest,
    ErrorBody,
    ResponseObject,
    ResponseRequest,
    TextCompletion,
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
