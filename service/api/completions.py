"""POST /v1/completions: legacy text completions, JSON or SSE, routed and failed over like
chat among the providers that serve the API."""

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
from service.errors import MAX_INT
from service.gateway import Gateway
from service.quotas.limits import Estimate, Record, estimate
from service.routing.relay import DONE_FRAME
from service.routing.router import Completion, OnOpen

COMPLETIONS = Api.COMPLETIONS


def _token_ids(value: Any) -> bool:
    """A non-empty array of token ids; integral floats in it become ints (JSON does not tell
    7 from 7.0, and a provider may)."""
    if not isinstance(value, list) or not value:
        return False
    for i, token in enumerate(value):
        if isinstance(token, float) and token.is_integer() and 0 <= token <= MAX_INT:
            value[i] = token = int(token)
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= MAX_INT:
            return False
    return True


def _is_prompt(value: Any) -> bool:
    """What OpenAI's legacy API takes: a string, or one kind of item in a non-empty array."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    if isinstance(first, str):
        return all(isinstance(v, str) for v in value)
    if isinstance(first, list):
        return all(_token_ids(v) for v in value)
    return _token_ids(value)


def validate_completion(body: Any) -> Checked:
    """Checks the gateway can make."""
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    model = model_field(body)
    if not _is_prompt(body.get("prompt")):
        raise errors.bad_request(
            "'prompt' must be a string, or a non-empty array of strings, of token ids, or of "
            "non-empty arrays of token ids.",
            param="prompt",
        )
    stream = stream_field(body)
    rewritten = int_field(body, "max_tokens")
    return Checked(model, stream, stream_options(body), rewritten)


async def completions(gw: Gateway, request: Request) -> Response | StreamResponse:
    token = await require_token(gw, request)  # before anything about the request is read
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model, stream, wants_usage, rewritten = validate_completion(body)
    need = estimate(body, len(raw))
    sent = None if rewritten else raw
    miss = partial(_complete, gw, request, token, body, sent, model, stream, wants_usage, need)
    return await through_cache(gw, request, token, COMPLETIONS, body, stream, wants_usage, miss)


async def _complete(
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
    call, candidates = await open_call(gw, request, token, model, need, COMPLETIONS)
    try:
        if stream:
            opened = await gw.router.stream(
                call, body, candidates, wants_usage, api=COMPLETIONS, on_open=on_open, raw=raw
            )
            if isinstance(opened, Completion):
                return relayed(opened, call)
            headers = [*SSE_HEADERS, *served_headers(call)]
            return StreamResponse(200, opened, headers, call=call, final=DONE_FRAME)
        answer = await gw.router.complete(call, body, candidates, api=COMPLETIONS, raw=raw)
        return relayed(answer, call)
    except BaseException as exc:
        finish_failed(call, exc)
        raise
