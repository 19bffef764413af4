"""Anthropic's Messages API at the edge: ``POST /v1/messages`` (JSON and SSE), ``POST
/v1/messages/count_tokens``, and ``GET /v1/models[/{id}]`` in Anthropic's shape (asked with an
``anthropic-version`` header).

The token comes from ``x-api-key`` or a bearer and is checked first.  A message is routed like
chat (``open_call``: candidates and the quota admission; the router's failover, hedging and
breakers); ``routing/messages.py`` decides per attempt between native pass-through and
translation.  Errors are rendered by the edge in Anthropic's shape (``service.app``).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import orjson

from service import errors
from service.anthropic.request import estimate_input_tokens, to_chat, validate
from service.anthropic.stream import MESSAGE_STOP
from service.api.auth import require_api_key
from service.api.cached import through_cache
from service.api.calls import finish_failed, open_call, served_headers
from service.api.errors import anthropic_error_event, anthropic_refusal
from service.api.http import (
    JSON_HEADERS,
    SSE_HEADERS,
    Request,
    Response,
    StreamResponse,
    parse_json,
)
from service.apis import Api
from service.gateway import Gateway
from service.quotas.limits import Estimate, Record, anthropic_rate_headers
from service.routing.messages import MessagesExchange, is_native, native_count, needs_chat
from service.routing.router import Call, Completion, OnOpen
from service.routing.table import AUTO
from service.types import Headers

MESSAGES = Api.MESSAGES
COUNT_TIMEOUT_S = 10.0


def _text_header(request: Request, name: bytes) -> str | None:
    value = request.header(name)
    return value.decode("latin-1").strip() or None if value is not None else None


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model.strip() if isinstance(model, str) else ""


async def create_message(gw: Gateway, request: Request) -> Response | StreamResponse:
    token = await require_api_key(gw, request)  # before anything about the request is read
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    validate(body)
    stream = body.get("stream") is True
    miss = partial(_create, gw, request, token, body, stream)
    response = await through_cache(gw, request, token, MESSAGES, body, stream, True, miss)
    if _is_hit(response):
        # A hit was admitted like any request: its quota headers under Anthropic's names too.
        response.headers += anthropic_rate_headers(response.headers, time.time())
    return response


def _is_hit(response: Response | StreamResponse) -> bool:
    return (b"x-best-cache", b"hit") in response.headers


async def _create(
    gw: Gateway,
    request: Request,
    token: Record | None,
    body: dict[str, Any],
    stream: bool,
    on_open: OnOpen | None,
) -> Response | StreamResponse:
    """A message from upstream (a cache miss, or the cache off)."""
    model = _model(body)
    prompt = estimate_input_tokens(body)
    cap = body.get("max_tokens")
    need = Estimate(prompt, cap if isinstance(cap, int) else None)
    candidates = gw.router.candidates(model, MESSAGES)
    # Translated before the admission: content chat cannot carry is the client's 400.
    chat = to_chat(body) if needs_chat(candidates) else None
    call, candidates = await open_call(gw, request, token, model, need, MESSAGES, candidates)
    exchange = MessagesExchange(
        body,
        chat,
        model,
        _text_header(request, b"anthropic-version"),
        _text_header(request, b"anthropic-beta"),
        prompt,
    )
    try:
        if stream:
            opened = await gw.router.stream_via(call, exchange, candidates, on_open)
            if isinstance(opened, Completion):
                return _refused(opened, call)
            headers = [*SSE_HEADERS, *_served(call)]
            return StreamResponse(
                200,
                opened,
                headers,
                call=call,
                final=MESSAGE_STOP,
                error_event=anthropic_error_event,
            )
        result = await gw.router.complete_via(call, exchange, candidates)
        if result.status >= 300:
            return _refused(result, call)
        return Response(result.status, result.body, [*JSON_HEADERS, *_served(call)], call=call)
    except BaseException as exc:
        finish_failed(call, exc)
        raise


def _served(call: Call) -> Headers:
    """Who served it, and the quota headers under OpenAI's and Anthropic's names."""
    headers = served_headers(call)
    if call.headers:
        headers = [*headers, *anthropic_rate_headers(call.headers, time.time())]
    return headers


def _refused(result: Completion, call: Call) -> Response:
    """The provider refused the request (the client's fault): its status, and its error in
    Anthropic's shape (a native provider's is already)."""
    served = call.candidate
    body = result.body
    if served is None or not is_native(served):
        body = anthropic_refusal(result.status, body)
    return Response(result.status, body, [*JSON_HEADERS, *_served(call)], call=call)


async def count_tokens(gw: Gateway, request: Request) -> Response:
    """``{"input_tokens": N}``: a native provider's count when the model's first candidate is
    one, else the gateway's estimate.  No quota is used, and an unknown model is counted
    too (never 404)."""
    await require_api_key(gw, request)
    body = parse_json(await request.body(gw.settings.max_body_bytes))
    validate({**body, "max_tokens": 1} if isinstance(body, dict) else body)  # no max_tokens
    count: int | None = None
    try:
        candidates = gw.router.candidates(_model(body), MESSAGES)
    except errors.GatewayError:
        candidates = []
    if candidates and is_native(candidates[0]):
        count = await native_count(
            gw.client,
            candidates[0],
            body,
            _text_header(request, b"anthropic-version"),
            _text_header(request, b"anthropic-beta"),
            min(COUNT_TIMEOUT_S, candidates[0].timeout_s),
        )
    if count is None:
        count = estimate_input_tokens(body)
    return Response(200, orjson.dumps({"input_tokens": count}), JSON_HEADERS)


# -- models in Anthropic's shape ------------------------------------------------------------------

MODELS_PREFIX = "/v1/models/"
_EPOCH = "1970-01-01T00:00:00Z"  # discovery does not say when a model was made
MAX_PAGE = 1000


def _model_object(model_id: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": _EPOCH}


async def models(gw: Gateway, request: Request) -> Response:
    """``GET /v1/models`` and ``GET /v1/models/{id}`` in Anthropic's shape."""
    await require_api_key(gw, request)
    if request.path.startswith(MODELS_PREFIX):
        return _retrieve_model(gw, request.path[len(MODELS_PREFIX) :])
    return _list_models(gw, dict(parse_qsl(request.query.decode("latin-1"))))


def _list_models(gw: Gateway, query: dict[str, str]) -> Response:
    """Every requestable id (``priority-auto`` first), paged by ``limit`` (default 20, at
    most 1000), ``after_id`` and ``before_id``."""
    ids = [AUTO, *gw.catalog.table.model_ids]
    limit = _limit(query.get("limit"))
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
        page = ids[start : start + limit]
        more = start + limit < len(ids)
    elif before is not None:
        end = ids.index(before) if before in ids else 0
        page = ids[max(0, end - limit) : end]
        more = end - limit > 0
    else:
        page, more = ids[:limit], len(ids) > limit
    document = {
        "data": [_model_object(i) for i in page],
        "has_more": more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }
    return Response(200, orjson.dumps(document), JSON_HEADERS)


def _retrieve_model(gw: Gateway, model_id: str) -> Response:
    """The id when something routes it: a model id, a pin, ``priority-auto`` or an alias."""
    table = gw.catalog.table
    target = gw.catalog.config.model_aliases.target(model_id)
    if not table.resolve(model_id) and not (target is not None and table.resolve(target)):
        raise errors.model_not_found(model_id)
    return Response(200, orjson.dumps(_model_object(model_id)), JSON_HEADERS)


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise errors.bad_request(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit")
    return int(value)
