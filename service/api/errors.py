"""The one place where the gateway's exceptions become HTTP: a status and an OpenAI error body
(``{"error": {"message", "type", "param", "code"}}``) per exception class, for JSON answers
and for the ``data: {"error": ...}`` event that ends a broken stream alike."""

from __future__ import annotations

import orjson

from service import errors
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


INTERNAL = errors.InternalError("Internal gateway error.")
