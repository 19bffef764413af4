"""POST /v1/chat/completions and /v1/embeddings: validate, admit, route, relay.

The hot path, top to bottom: read and parse the body, resolve candidates (a dict lookup),
one admission call to the store, the upstream call(s), the response.  Settlement runs after.
"""

from __future__ import annotations

from typing import Any

from service import errors
from service.api.auth import caller_id
from service.api.http import SSE_HEADERS, Request, Response, StreamResponse, parse_json
from service.gateway import Gateway
from service.quotas.limits import estimate_cost
from service.routing.router import Call, Completion
from service.routing.table import Candidate


def _int_field(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise errors.bad_request(f"'{name}' must be a non-negative integer.", param=name)


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
    if not all(isinstance(m, dict) for m in messages):
        raise errors.bad_request("Each entry of 'messages' must be an object.", param="messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise errors.bad_request("'stream' must be a boolean.", param="stream")
    _int_field(body, "max_tokens")
    _int_field(body, "max_completion_tokens")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise errors.bad_request("'stream_options' must be an object.", param="stream_options")
    wants_usage = bool(options and options.get("include_usage"))
    return model.strip(), stream, wants_usage


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


def _served_headers(call: Call) -> list[tuple[bytes, bytes]]:
    c = call.candidate
    return [*c.served_headers, *call.headers] if c else call.headers


async def chat_completions(gw: Gateway, request: Request) -> Response | StreamResponse:
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model, stream, wants_usage = validate_chat(body)
    call, available = await _admit(gw, request, model, estimate_cost(body, len(raw)))
    if stream:
        opened = await gw.router.stream(call, body, available, wants_usage)
        if not isinstance(opened, Completion):
            return StreamResponse(200, opened, [*SSE_HEADERS, *_served_headers(call)], call=call)
        return _relayed(opened, call)
    return _relayed(await gw.router.complete(call, body, available, embeddings=False), call)


async def embeddings(gw: Gateway, request: Request) -> Response:
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model = validate_embeddings(body)
    call, available = await _admit(gw, request, model, estimate_cost(body, len(raw), chat=False))
    return _relayed(await gw.router.complete(call, body, available, embeddings=True), call)


async def _admit(
    gw: Gateway, request: Request, model: str, cost: int
) -> tuple[Call, list[Candidate]]:
    """Who is calling, which candidates, and the one store call that admits the request."""
    token = caller_id(gw, request)
    candidates = gw.router.candidates(model)
    call = gw.router.new_call(request.request_id, token)
    return call, await gw.router.admit(call, cost, candidates)


def _relayed(result: Completion, call: Call) -> Response:
    headers = [(b"content-type", result.content_type), *_served_headers(call)]
    return Response(result.status, result.body, headers, call=call)
