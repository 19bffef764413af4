"""How the fake provider answers one request: ``Behavior`` and its constructors."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

RetryAfter = int | float | str | datetime | None

_GARBAGE = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"


class Kind(StrEnum):
    """What the provider does with one request; see the ``Behavior`` constructors."""

    OK = "ok"
    HELD = "held"
    ERROR = "error"
    HANG = "hang"
    GARBAGE = "garbage"
    EMPTY = "empty"
    NO_CHOICES = "no_choices"
    INBAND_ERROR = "inband_error"
    STREAM_DIES = "stream_dies"
    JSON_FOR_STREAM = "json_for_stream"
    USAGE_ON_CHOICES = "usage_on_choices"
    SCRIPTED = "scripted"


# status -> (error type, error code, message); "{model}" is replaced by the requested model.
_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "permission_denied", "Your key may not use this model."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}


@dataclass(frozen=True, slots=True)
class Behavior:
    """One way of answering a request. Build it with the class methods.

    ``delay_s`` waits before anything is sent (any kind); ``chunk_delay_s`` waits between SSE
    events. ``dataclasses.replace`` combines them with any kind, e.g. a slow 503.
    """

    kind: Kind = Kind.OK
    status: int = 200
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    after_chunks: int = 0
    error_type: str | None = None
    error_code: str | None = None
    message: str | None = None
    param: str | None = None
    retry_after: str | None = None
    body: bytes | None = None
    chunks: tuple[dict[str, Any], ...] = ()  # SCRIPTED: the chat chunks streamed
    answer: dict[str, Any] | None = None  # SCRIPTED: the chat completion answered as JSON

    @classmethod
    def ok(cls, delay_s: float = 0.0, chunk_delay_s: float = 0.0) -> Behavior:
        """Succeed (JSON, or SSE for ``stream: true``), after ``delay_s``."""
        return cls(Kind.OK, delay_s=delay_s, chunk_delay_s=chunk_delay_s)

    @classmethod
    def slow_stream(cls, chunk_delay_s: float) -> Behavior:
        """Succeed, waiting ``chunk_delay_s`` between SSE events (JSON answers are not slowed)."""
        return cls.ok(chunk_delay_s=chunk_delay_s)

    @classmethod
    def held(cls) -> Behavior:
        """Wait until ``FakeProvider.release()``, then succeed."""
        return cls(Kind.HELD)

    @classmethod
    def error(
        cls,
        status: int,
        *,
        code: str | None = None,
        error_type: str | None = None,
        message: str | None = None,
        param: str | None = None,
        retry_after: RetryAfter = None,
    ) -> Behavior:
        """Answer ``status`` with an OpenAI error body; unset fields get realistic defaults."""
        default_type, default_code, default_message = _ERROR_DEFAULTS.get(
            status,
            ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}"),
        )
        return cls(
            Kind.ERROR,
            status=status,
            error_type=error_type or default_type,
            error_code=code if code is not None else default_code,
            message=message or default_message,
            param=param,
            retry_after=format_retry_after(retry_after),
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Behavior:
        """A 5xx with an OpenAI ``server_error`` body."""
        return cls.error(status)

    @classmethod
    def unauthorized(cls) -> Behavior:
        """401 ``invalid_api_key``, as if the gateway's provider key were wrong."""
        return cls.error(401)

    @classmethod
    def forbidden(cls) -> Behavior:
        """403 ``permission_denied``."""
        return cls.error(403)

    @classmethod
    def model_not_found(cls) -> Behavior:
        """404 ``model_not_found`` even though the model is listed."""
        return cls.error(404)

    @classmethod
    def context_length_exceeded(cls) -> Behavior:
        """400 ``context_length_exceeded`` (the gateway fails over without a cooldown)."""
        return cls.error(
            400,
            code="context_length_exceeded",
            param="messages",
            message="This model's maximum context length is 8192 tokens. "
            "However, your messages resulted in 9001 tokens.",
        )

    @classmethod
    def bad_request(cls, message: str = "Invalid value for 'temperature'.") -> Behavior:
        """400 ``invalid_request_error``: the client's fault, to be relayed as is."""
        return cls.error(400, code="invalid_value", param="temperature", message=message)

    @classmethod
    def rate_limited(cls, retry_after: RetryAfter = None) -> Behavior:
        """429; ``retry_after``: int or float seconds, a raw header string, a datetime, or none."""
        return cls.error(429, retry_after=retry_after)

    @classmethod
    def hang(cls) -> Behavior:
        """Read the request and never answer, until the client leaves or ``stop()``."""
        return cls(Kind.HANG)

    @classmethod
    def garbage(cls, body: bytes = _GARBAGE) -> Behavior:
        """200 ``application/json`` whose body is not JSON."""
        return cls(Kind.GARBAGE, body=body)

    @classmethod
    def empty(cls) -> Behavior:
        """200 with an empty body (for a stream: SSE headers, then no event at all)."""
        return cls(Kind.EMPTY)

    @classmethod
    def no_choices(cls) -> Behavior:
        """200 with ``choices: []`` (embeddings: ``data: []``; streams: one such chunk)."""
        return cls(Kind.NO_CHOICES)

    @classmethod
    def inband_error(cls, message: str = "Upstream model crashed.") -> Behavior:
        """200 whose body is ``{"error": {...}}`` (for a stream: one such SSE event, no [DONE])."""
        return cls(Kind.INBAND_ERROR, message=message)

    @classmethod
    def stream_dies(cls, after_chunks: int = 2) -> Behavior:
        """Send ``after_chunks`` SSE events, then abort the TCP connection without [DONE].

        A non-streaming request gets half of its JSON body (Content-Length promises all of it)
        before the abort.
        """
        return cls(Kind.STREAM_DIES, after_chunks=after_chunks)

    @classmethod
    def json_for_stream(cls) -> Behavior:
        """Answer a ``stream: true`` request with a plain ``chat.completion`` JSON body."""
        return cls(Kind.JSON_FOR_STREAM)

    @classmethod
    def usage_on_choices(cls) -> Behavior:
        """Stream as LiteLLM's proxy does: the usage rides on the last chunk with choices
        (its ``finish_reason`` chunk) instead of a usage-only chunk of its own."""
        return cls(Kind.USAGE_ON_CHOICES)

    @classmethod
    def scripted(
        cls,
        chunks: list[dict[str, Any]] | None = None,
        answer: dict[str, Any] | None = None,
        chunk_delay_s: float = 0.0,
    ) -> Behavior:
        """Stream exactly these ``chat.completion.chunk`` events (then ``[DONE]``) to a
        streaming chat request, and answer a JSON one with ``answer``; the model and id
        are the test's own."""
        return cls(
            Kind.SCRIPTED, chunks=tuple(chunks or ()), answer=answer, chunk_delay_s=chunk_delay_s
        )


def format_retry_after(value: RetryAfter) -> str | None:
    """Render a Retry-After header: ``7`` -> "7", ``1.5`` -> "1.5", datetime -> HTTP-date."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return email.utils.format_datetime(aware.astimezone(UTC), usegmt=True)
    if isinstance(value, int):
        return str(value)
    return format(value, "g")
