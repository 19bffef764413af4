"""POST /v1/completions: legacy text completions, JSON or SSE, routed and failed over like
chat among the providers that serve the API."""

from __future__ import annotations

from functools import partial
from typing import Any

from service import errors
from service.api.auth import require_token
from service.api.cached import through_cache
from service.api.calls import finish_failed, int_field, open_call, relayed, served_headers
from service.api.http import SSE_HEADERS, Request, Response, StreamResponse, parse_json
from service.apis import Api
from service.gateway import Gateway
from service.quotas.limits import Estimate, Record, estimate
from service.routing.relay import DONE_FRAME
from service.routing.router import Completion, OnOpen

COMPLETIONS = Api.COMPLETIONS


def validate_completion(body: Any) -> tuple[str, bool, bool]:
    """Checks the gateway can make; returns (model, stream, client asked for usage)."""
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        model = ""
    if not isinstance(model, str):
        raise errors.bad_request("'model' must be a string.", param="model")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        pass
    elif not isinstance(prompt, list) or not prompt:
        raise errors.bad_request(
            "'prompt' must be a string or a non-empty array of strings or token ids.",
            param="prompt",
        )
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise errors.bad_request("'stream' must be a boolean.", param="stream")
    int_field(body, "max_tokens")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise errors.bad_request("'stream_options' must be an object.", param="stream_options")
    return model.strip(), stream, bool(options and options.get("include_usage"))


async def completions(gw: Gateway, request: Request) -> Response | StreamResponse:
    token = await require_token(gw, request)  # before anything about the request is read
    raw = await request.body(gw.settings.max_body_bytes)
    body = parse_json(raw)
    model, stream, wants_usage = validate_completion(body)
    need = estimate(body, len(raw))
    miss = partial(_complete, gw, request, token, body, raw, model, stream, wants_usage, need)
    return await through_cache(gw, request, token, COMPLETIONS, body, stream, wants_usage, miss)


async def _complete(
    gw: Gateway,
    request: Request,
    token: Record | None,
    body: dict[str, Any],
    raw: bytes,
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
