"""The one place where the gateway's exceptions become HTTP: a status and an OpenAI error body
(``{"error": {"message", "type", "param", "code"}}``) per exception class, for JSON answers
and for the ``data: {"error": ...}`` event that ends a broken stream alike.

Anthropic's routes (``/v1/messages*``, the models routes asked with ``anthropic-version``)
render the same exceptions in Anthropic's shape (``{"type": "error", "error": {"type",
"message"}}``): the same status, except 529 ``overloaded_error`` when every candidate is
cooling or its breaker open.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from service import errors
from service.anthropic.stream import error_event
from service.quotas.limits import anthropic_rate_headers
from service.types import Headers

JSON: Headers = [(b"content-type", b"application/json")]

# class -> (status, OpenAI type, default code); a subclass not listed uses its base's row.
TABLE: dict[type[errors.GatewayError], tuple[int, str, str | None]] = {
    errors.BadRequest: (400, "invalid_request_error", None),
    errors.Unauthorized: (401, "authentication_error", "invalid_api_key"),
    errors.Forbidden: (403, "permission_error", "permission_denied"),
    errors.NotFound: (404, "invalid_request_error", "not_found"),
    errors.ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    errors.MethodNotAllowed: (405, "invalid_request_error", "method_not_allowed"),
    errors.Conflict: (409, "invalid_request_error", "conflict"),
    errors.PayloadTooLarge: (413, "invalid_request_error", "payload_too_large"),
    errors.QuotaExceeded: (429, "rate_limit_error", "rate_limit_exceeded"),
    errors.BudgetExceeded: (429, "insufficient_quota", "insufficient_quota"),
    errors.ProvidersRateLimited: (429, "rate_limit_error", "rate_limit_exceeded"),
    errors.UpstreamFailed: (502, "api_error", "upstream_error"),
    errors.Unavailable: (503, "api_error", "service_unavailable"),
    errors.UpstreamTimeout: (504, "api_error", "upstream_timeout"),
    errors.StreamFailed: (502, "api_error", "upstream_error"),
    errors.InternalError: (500, "api_error", "internal_error"),
    errors.GatewayError: (500, "api_error", "internal_error"),
}


def _row(exc: errors.GatewayError) -> tuple[int, str, str | None]:
    for cls in type(exc).__mro__:
        row = TABLE.get(cls)
        if row is not None:
            return row
    return TABLE[errors.GatewayError]


def error_body(exc: errors.GatewayError) -> bytes:
    _, kind, code = _row(exc)
    return orjson.dumps(
        {
            "error": {
                "message": exc.message,
                "type": kind,
                "param": exc.param,
                "code": exc.code or code,
            }
        }
    )


def status_of(exc: errors.GatewayError) -> int:
    return _row(exc)[0]


def error_headers(exc: errors.GatewayError) -> Headers:
    """Content type, Retry-After and the error's own headers."""
    headers = [*JSON, *exc.headers]
    status = status_of(exc)
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, int(exc.retry_after_s + 0.999))).encode()))
    return headers


def sse_error_event(exc: errors.GatewayError) -> bytes:
    """The event that ends a stream that broke after its first event."""
    return b"data: " + error_body(exc) + b"\n\n"


def responses_error_event(exc: errors.GatewayError) -> bytes:
    """The Responses API's own error event (``event: error``, data ``{"type": "error",
    "code", "message", "param", "sequence_number"}``) that ends a broken Responses stream."""
    _, _, code = _row(exc)
    sequence = exc.sequence_number if isinstance(exc, errors.ResponseStreamFailed) else 0
    data = {
        "type": "error",
        "code": exc.code or code,
        "message": exc.message,
        "param": exc.param,
        "sequence_number": sequence,
    }
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


# -- Anthropic's shape ---------------------------------------------------------------------------

OVERLOADED = 529
# Anthropic's error type for each status; any other status is an ``api_error``.
ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    OVERLOADED: "overloaded_error",
}
# Classes answered with another status than the table's on Anthropic's routes: providers'
# rate limits and open breakers are the gateway being overloaded (Anthropic's clients back
# off and retry a 529); the caller's own quotas and budgets stay 429.
ANTHROPIC_STATUS: dict[type[errors.GatewayError], int] = {
    errors.ProvidersRateLimited: OVERLOADED,
    errors.BreakersOpen: OVERLOADED,
}


def anthropic_status(exc: errors.GatewayError) -> int:
    for cls in type(exc).__mro__:
        status = ANTHROPIC_STATUS.get(cls)
        if status is not None:
            return status
    return status_of(exc)


def anthropic_error_body(exc: errors.GatewayError) -> bytes:
    """Anthropic's error shape; a refused caller's error (401, 403) raised with a ``code`` of
    its own, such as a JWT's refusal cause, also carries it, as ``code`` beside Anthropic's
    fields."""
    status = anthropic_status(exc)
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    error = {"type": kind, "message": exc.message}
    if exc.code and status in (401, 403):
        error["code"] = exc.code
    return orjson.dumps({"type": "error", "error": error})


def anthropic_error_headers(exc: errors.GatewayError) -> Headers:
    """``error_headers``, and the quota headers under Anthropic's names too."""
    headers = error_headers(exc)
    return [*headers, *anthropic_rate_headers(exc.headers, time.time())]


def anthropic_error_event(exc: errors.GatewayError) -> bytes:
    """The ``event: error`` that ends a Messages stream broken after its first event."""
    return error_event(ANTHROPIC_TYPES.get(anthropic_status(exc), "api_error"), exc.message)


def anthropic_refusal(status: int, body: bytes) -> bytes:
    """An upstream's refusal of the request (the client's fault, relayed with its status)
    in Anthropic's shape, whatever shape the provider used."""
    message = f"The provider refused the request (HTTP {status})."
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
    elif isinstance(error, str):
        message = error
    kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


INTERNAL = errors.InternalError("Internal gateway error.")
