"""Upstream failures: what went wrong with one attempt, translated once at the boundary.

``classify`` turns an upstream answer into either nothing (a usable success), a
``ClientFault`` (the request itself is wrong: relay it untouched) or an ``UpstreamFailure``
(try the next candidate).  The reason decides what cools down: the whole provider, the
(provider, model) pair, or nothing.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson

FailureScope = Literal["provider", "pair", "none"]

# Failover reasons; also the bounded label set of the failover metric.
CONNECT = "connect"
TIMEOUT = "timeout"
SERVER_ERROR = "server_error"
RATE_LIMITED = "rate_limited"
AUTH = "auth"
MODEL_NOT_FOUND = "model_not_found"
BAD_BODY = "bad_body"
IN_BAND_ERROR = "in_band_error"
CONTEXT_LENGTH = "context_length"
STREAM_BROKEN = "stream_broken"

REASONS = (
    CONNECT,
    TIMEOUT,
    SERVER_ERROR,
    RATE_LIMITED,
    AUTH,
    MODEL_NOT_FOUND,
    BAD_BODY,
    IN_BAND_ERROR,
    CONTEXT_LENGTH,
    STREAM_BROKEN,
)

_SCOPES: dict[str, FailureScope] = {
    CONNECT: "pair",
    TIMEOUT: "pair",
    SERVER_ERROR: "pair",
    RATE_LIMITED: "provider",
    AUTH: "provider",
    MODEL_NOT_FOUND: "pair",
    BAD_BODY: "pair",
    IN_BAND_ERROR: "pair",
    CONTEXT_LENGTH: "none",
    STREAM_BROKEN: "pair",
}


class UpstreamFailure(Exception):
    """One attempt failed in a way that moves on to the next candidate."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def scope(self) -> FailureScope:
        return _SCOPES[self.reason]


class ClientFault(Exception):
    """The upstream refused the request itself (a 4xx that is the client's fault)."""

    def __init__(self, status: int, body: bytes, content_type: bytes) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value: integer or fractional seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):  # "nan", "inf", "1e999": int(seconds * 1000) would raise
        return None
    return max(0.0, seconds)


def error_message(body: bytes, fallback: str) -> str:
    """The ``error.message`` of an OpenAI-shaped body, else a short excerpt of the body."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return f"{fallback}: {text}" if text else fallback
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return f"{fallback}: {err['message']}"
        if isinstance(err, str):
            return f"{fallback}: {err}"
    return fallback


def _error_code(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err: dict[str, Any] = parsed["error"]
        code = err.get("code") or err.get("type")
        return code if isinstance(code, str) else None
    return None


def _names_previous_response(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict):
        return False
    return err.get("param") == "previous_response_id" or err.get("code") == (
        "previous_response_not_found"
    )


def failure_for_status(
    status: int, body: bytes, retry_after: str | None, content_type: bytes
) -> UpstreamFailure | ClientFault:
    """Classify a non-2xx upstream answer."""
    message = error_message(body, f"upstream answered HTTP {status}")
    if status == 429:
        return UpstreamFailure(
            RATE_LIMITED, message, status=status, retry_after_s=parse_retry_after(retry_after)
        )
    if status in (401, 403):
        return UpstreamFailure(AUTH, message, status=status)
    if status == 404:
        if _names_previous_response(body):
            # The stored conversation is gone (expired, deleted): the request's fault, and
            # no other provider holds it either.
            return ClientFault(status, body, content_type)
        return UpstreamFailure(MODEL_NOT_FOUND, message, status=status)
    if status >= 500:
        return UpstreamFailure(
            SERVER_ERROR, message, status=status, retry_after_s=parse_retry_after(retry_after)
        )
    code = _error_code(body) if status in (400, 413, 422) else None
    if code is not None and "context_length" in code:
        return UpstreamFailure(CONTEXT_LENGTH, message, status=status)
    if status == 408:
        return UpstreamFailure(TIMEOUT, message, status=status)
    return ClientFault(status, body, content_type)


def in_band_failure(parsed: Any, what: str) -> UpstreamFailure | None:
    """A decoded upstream ``what`` (answer, event) that is not an object or carries an
    ``error`` object is a failure, whatever the HTTP status said."""
    if not isinstance(parsed, dict):
        return UpstreamFailure(BAD_BODY, f"upstream {what} is not a JSON object")
    err = parsed.get("error")
    if err:
        detail = err.get("message") if isinstance(err, dict) else err
        return UpstreamFailure(IN_BAND_ERROR, f"upstream {what} carries an error: {detail}")
    return None


def check_completion(parsed: Any) -> UpstreamFailure | None:
    """A 200 body that is not a usable completion (in-band error, no choices) is a failure."""
    failure = in_band_failure(parsed, "answer")
    if failure is not None:
        return failure
    choices = parsed.get("choices")
    if not isinstance(choices, list) or not choices:
        return UpstreamFailure(BAD_BODY, "upstream answered a completion with no choices")
    return None


def check_response(parsed: Any) -> UpstreamFailure | None:
    """A Responses API answer: an object with an id (the conversation is stored under it)
    and no error (a ``failed`` response carries one)."""
    failure = in_band_failure(parsed, "answer")
    if failure is not None:
        return failure
    if not isinstance(parsed.get("id"), str) or not isinstance(parsed.get("output"), list):
        return UpstreamFailure(BAD_BODY, "upstream answered a response with no id or output")
    return None


def check_embeddings(parsed: Any) -> UpstreamFailure | None:
    failure = in_band_failure(parsed, "answer")
    if failure is not None:
        return failure
    data = parsed.get("data")
    if not isinstance(data, list) or not data:
        return UpstreamFailure(BAD_BODY, "upstream answered embeddings with no data")
    return None


STREAM_AS_JSON_INVALID = "upstream answered a stream with invalid JSON"


def checked_json(
    raw: bytes,
    check: Callable[[Any], UpstreamFailure | None],
    not_json: str = "upstream answered a body that is not JSON",
) -> Any:
    """The parsed answer ``raw``; UpstreamFailure when it is not JSON or ``check`` finds it
    unusable (the one place every JSON answer, streamed or not, is judged)."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(BAD_BODY, not_json) from None
    failure = check(parsed)
    if failure is not None:
        raise failure
    return parsed
