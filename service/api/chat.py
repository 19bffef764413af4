"""POST /v1/chat/completions and /v1/embeddings: validate, admit, route, relay.

The hot path, top to bottom: the token (a dict lookup), read and parse the body, the response
cache (nothing for a token that does not use it; see api/cached.py), resolve candidates (a dict
lookup), the admission (one store call, none for a token without limits),
the upstream call(s), the response.  Settlement runs after, batched.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from service import errors
from service.api.auth import require_token
from service.api.cached import through_cache
from service.api.calls import (
    Checked,
    finish_failed,
    int_field,
    model_field,
    open_call,
    relayed,
    served_headers,
    stream_field,
    stream_options,
)
from service.api.http import SSE_HEADERS, Request, Response, StreamResponse, parse_json
from service.apis import Api
from service.gateway import Gateway
from service.quotas.limits import Estimate, Record, estimate
from service.routing.relay import DONE_FRAME
from service.routing.router import Completion, OnOpen


def validate_chat(body: Any) -> Checked:
    """Checks the gateway can make."""
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    model = model_field(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise errors.bad_request(
            "Each entry of 'messages' must be an object with a string 'role'.", param="messages"
        )
    stream = stream_field(body)
    rewritten = int_field(body, "max_tokens") | int_field(body, "max_completion_tokens")
    return Checked(model, stream, stream_options(body), rewritten)


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
    model, stream, wants_usage, rewritten = validate_chat(body)
    need = estimate(body, len(raw))
    sent = None if rewritten else raw
    miss = partial(_chat, gw, request, token, body, sent, model, stream, wants_usage, need)
    return await through_cache(gw, request, token, Api.CHAT, body, stream, wants_usage, miss)


async def _chat(
    gw: Gateway,
    request: Request,
    token: Record | None,
    body: dict[str, Any],
    raw: bytes | None,
    model: str,
    stream: bool,
    wants_usage: bool,
    need: Estimate,
    on_open: OnOpen | None,
) -> Response | StreamResponse:
    call, candidates = await open_call(gw, request, token, model, need)
    try:
        if stream:
            opened = await gw.router.stream(
                call, body, candidates, wants_usage, on_open=on_open, raw=raw
            )
            if not isinstance(opened, Completion):
                headers = [*SSE_HEADERS, *served_headers(call)]
                return StreamResponse(200, opened, headers, call=call, final=DONE_FRAME)
            return relayed(opened, call)
        answer = await gw.router.complete(call, body, candidates, embeddings=False, raw=raw)
        return relayed(answer, call)
    except BaseException as exc:
        finish_failed(call, exc)
        raise


async def embeddings(gw: Gateway, request: Request) -> Response | StreamResponse:
    token = await require_token(gw, request)
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model = validate_embeddings(body)
    need = estimate(body, len(raw), False)
    miss = partial(_embeddings, gw, request, token, body, raw, model, need)
    return await through_cache(gw, request, token, Api.EMBEDDINGS, body, False, False, miss)


async def _embeddings(
    gw: Gateway,
    request: Request,
    token: Record | None,
    body: dict[str, Any],
    raw: bytes,
    model: str,
    need: Estimate,
    on_open: OnOpen | None,
) -> Response:
    call, candidates = await open_call(gw, request, token, model, need)
    try:
        answer = await gw.router.complete(call, body, candidates, embeddings=True, raw=raw)
        return relayed(answer, call)
    except BaseException as exc:
        finish_failed(call, exc)
        raise
