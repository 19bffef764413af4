"""POST /v1/chat/completions and /v1/embeddings: validate, admit, route, relay.

The hot path, top to bottom: the token (a dict lookup), read and parse the body, resolve
candidates (a dict lookup), the admission (one store call, none for a token without limits),
the upstream call(s), the response.  Settlement runs after, batched.
"""

from __future__ import annotations

from typing import Any

from service import errors
from service.api.auth import require_token
from service.api.calls import (
    finish_failed,
    int_field,
    open_call,
    relayed,
    served_headers,
    stream_options,
)
from service.api.http import SSE_HEADERS, Request, Response, StreamResponse, parse_json
from service.gateway import Gateway
from service.quotas.limits import estimate
from service.routing.relay import DONE_FRAME
from service.routing.router import Completion


def validate_chat(body: Any) -> tuple[str, bool, bool]:
    """Checks the gateway can make; returns (model, stream, client asked for usage)."""
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    model = body.get("model", "")
    if model is None:
        model = ""
    if not isinstance(model, str):
        raise errors.bad_request("'model' must be a string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise errors.bad_request(
            "Each entry of 'messages' must be an object with a string 'role'.", param="messages"
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise errors.bad_request("'stream' must be a boolean.", param="stream")
    int_field(body, "max_tokens")
    int_field(body, "max_completion_tokens")
    return model.strip(), stream, stream_options(body)


def validate_embeddings(body: Any) -> str:
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise errors.bad_request("'model' is required and must be a string.", param="model")
    data = body.get("input")
    if not isinstance(data, str | list) or not data:
        raise errors.bad_request("'input' must be a non-empty string or array.", param="input")
    return model.strip()


async def chat_completions(gw: Gateway, request: Request) -> Response | StreamResponse:
    token = await require_token(gw, request)  # before anything about the request is read
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model, stream, wants_usage = validate_chat(body)
    call, candidates = await open_call(gw, request, token, model, estimate(body, len(raw)))
    try:
        if stream:
            opened = await gw.router.stream(call, body, candidates, wants_usage)
            if not isinstance(opened, Completion):
                headers = [*SSE_HEADERS, *served_headers(call)]
                return StreamResponse(200, opened, headers, call=call, final=DONE_FRAME)
            return relayed(opened, call)
        return relayed(await gw.router.complete(call, body, candidates, embeddings=False), call)
    except BaseException as exc:
        finish_failed(call, exc)
        raise


async def embeddings(gw: Gateway, request: Request) -> Response:
    token = await require_token(gw, request)
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model = validate_embeddings(body)
    call, candidates = await open_call(gw, request, token, model, estimate(body, len(raw), False))
    try:
        return relayed(await gw.router.complete(call, body, candidates, embeddings=True), call)
    except BaseException as exc:
        finish_failed(call, exc)
        raise
