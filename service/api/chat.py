"""POST /v1/chat/completions and /v1/embeddings: validate, admit, route, relay.

The hot path, top to bottom: the token (a dict lookup), read and parse the body, resolve
candidates (a dict lookup), the admission (one store call, none for a token without limits),
the upstream call(s), the response.  Settlement runs after, batched.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from service import errors
from service.api.auth import require_token
from service.api.http import SSE_HEADERS, Request, Response, StreamResponse, parse_json
from service.gateway import Gateway
from service.quotas.limits import Estimate, Record, estimate
from service.routing.relay import DONE_FRAME
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


_HEDGE_VALUES = {b"true": True, b"1": True, b"false": False, b"0": False}


def _hedge_header(request: Request) -> bool | None:
    """``x-best-hedge``: true or false overrides the configured hedging of the model."""
    value = request.header(b"x-best-hedge")
    if value is None:
        return None
    hedge = _HEDGE_VALUES.get(value.strip().lower())
    if hedge is None:
        raise errors.bad_request(
            "Header 'x-best-hedge' must be true or false.", param="x-best-hedge"
        )
    return hedge


def _served_headers(call: Call) -> list[tuple[bytes, bytes]]:
    c = call.candidate
    return [*c.served_headers, *call.headers] if c else call.headers


async def chat_completions(gw: Gateway, request: Request) -> Response | StreamResponse:
    token = await require_token(gw, request)  # before anything about the request is read
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model, stream, wants_usage = validate_chat(body)
    call, candidates = await _admit(gw, request, token, model, estimate(body, len(raw)))
    try:
        if stream:
            opened = await gw.router.stream(call, body, candidates, wants_usage)
            if not isinstance(opened, Completion):
                headers = [*SSE_HEADERS, *_served_headers(call)]
                return StreamResponse(200, opened, headers, call=call, final=DONE_FRAME)
            return _relayed(opened, call)
        return _relayed(await gw.router.complete(call, body, candidates, embeddings=False), call)
    except BaseException as exc:
        _finish_failed(call, exc)
        raise


async def embeddings(gw: Gateway, request: Request) -> Response:
    token = await require_token(gw, request)
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model = validate_embeddings(body)
    call, candidates = await _admit(gw, request, token, model, estimate(body, len(raw), False))
    try:
        return _relayed(await gw.router.complete(call, body, candidates, embeddings=True), call)
    except BaseException as exc:
        _finish_failed(call, exc)
        raise


def _finish_failed(call: Call, exc: BaseException) -> None:
    """Whatever went wrong, the quotas are settled (a no-op if they were), and an error
    answer still carries the rate-limit and budget headers."""
    call.finish()
    if isinstance(exc, errors.GatewayError):
        exc.headers = [*exc.headers, *call.headers]


async def _admit(
    gw: Gateway,
    request: Request,
    token: Record | None,
    model: str,
    need: Estimate,
    api: str = "chat",
    pinned: list[Candidate] | None = None,
) -> tuple[Call, list[Candidate]]:
    """Which candidates (``pinned``, or those serving ``api``), and the quota admission (no
    store call for a token without limits).  From here on the call must be finished,
    whatever happens: it settles the quotas."""
    candidates = pinned if pinned is not None else gw.router.candidates(model, api)
    call = gw.router.new_call(request.request_id, model, _hedge_header(request))
    admission = await gw.quotas.admit(token, call.entry_id, need, candidates)
    call.headers = admission.headers
    call.settle = partial(gw.quotas.settle, admission)
    return call, candidates


def _relayed(result: Completion, call: Call) -> Response:
    headers = [(b"content-type", result.content_type), *_served_headers(call)]
    return Response(result.status, result.body, headers, call=call)
