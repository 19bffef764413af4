"""What every routed hot route shares: opening a call (candidates and the quota admission),
finishing it whatever happens, and answering with what served it."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

from service import errors
from service.api.http import Request, Response
from service.apis import Api
from service.errors import MAX_INT
from service.gateway import Gateway
from service.quotas.limits import Estimate, Record
from service.routing.router import Call, Completion
from service.routing.table import Candidate


def model_field(body: dict[str, Any]) -> str:
    """``body["model"]``, stripped: absent or null is "", anything but a string a 400."""
    model = body.get("model")
    if model is None:
        return ""
    if not isinstance(model, str):
        raise errors.bad_request("'model' must be a string.", param="model")
    return model.strip()


def stream_field(body: dict[str, Any]) -> bool:
    """``body["stream"]``: absent or null is False, anything but a boolean a 400."""
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise errors.bad_request("'stream' must be a boolean.", param="stream")
    return stream


def int_field(body: dict[str, Any], name: str) -> bool:
    """``body[name]`` is absent, null or an integer in 0..MAX_INT.  JSON does not tell 2 from
    2.0 (JSON Schema's integer is either): an integral float is taken, and sent on as an int.
    Returns whether the body was rewritten so."""
    value = body.get(name)
    rewritten = False
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_INT:
        value = body[name] = int(value)
        rewritten = True
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise errors.bad_request(f"'{name}' must be an integer from 0 to {MAX_INT}.", param=name)
    return rewritten


class Checked(NamedTuple):
    """What the edge's checks tell of a chat or completions body."""

    model: str
    stream: bool
    wants_usage: bool  # the client asked for the usage chunk
    rewritten: bool  # the checks changed the body: its bytes are not the client's anymore


def stream_options(body: dict[str, Any]) -> bool:
    """Whether the client asked for the usage chunk (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise errors.bad_request("'stream_options' must be an object.", param="stream_options")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise errors.bad_request(
            "'stream_options.include_usage' must be a boolean.", param="stream_options"
        )
    return bool(include)


_HEDGE_VALUES = {b"true": True, b"1": True, b"false": False, b"0": False}


def hedge_header(request: Request) -> bool | None:
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


def served_headers(call: Call) -> list[tuple[bytes, bytes]]:
    c = call.candidate
    return [*c.served_headers, *call.headers] if c else call.headers


def finish_failed(call: Call, exc: BaseException) -> None:
    """Whatever went wrong, the quotas are settled (a no-op if they were), and an error
    answer still carries the rate-limit and budget headers."""
    call.finish()
    if isinstance(exc, errors.GatewayError):
        exc.headers = [*exc.headers, *call.headers]


async def open_call(
    gw: Gateway,
    request: Request,
    token: Record | None,
    model: str,
    need: Estimate,
    api: str = Api.CHAT,
    pinned: list[Candidate] | None = None,
) -> tuple[Call, list[Candidate]]:
    """Which candidates (``pinned``, or those serving ``api``), and the quota admission (no
    store call for a token without limits).  From here on the call must be finished,
    whatever happens: it settles the quotas."""
    candidates = pinned if pinned is not None else gw.router.candidates(model, api)
    call = gw.router.new_call(request.request_id, model, hedge_header(request))
    call.trace = request.trace
    admission = await gw.quotas.admit(token, call.entry_id, need, candidates)
    call.headers = admission.headers
    call.settle = partial(gw.quotas.settle, admission)
    return call, candidates


def relayed(result: Completion, call: Call) -> Response:
    headers = [(b"content-type", result.content_type), *served_headers(call)]
    return Response(result.status, result.body, headers, call=call)
