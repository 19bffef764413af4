"""Plain-ASGI request and response primitives: the HTTP edge without a framework.

The hot path is a handful of dictionary lookups and two ``send`` calls; a framework's
per-request objects would show in a profile at the throughput this gateway aims for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from service.api.errors import (
    anthropic_error_body,
    anthropic_error_headers,
    anthropic_status,
    error_body,
    error_headers,
    sse_error_event,
    status_of,
)
from service.errors import BadRequest, GatewayError, payload_too_large
from service.observability.tracing import RequestTrace
from service.types import Headers, Receive, Respond, Scope, Send

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Request:
    """One HTTP request: scope fields the handlers need, and its body read with a limit."""

    __slots__ = (
        "_headers",
        "method",
        "on_body_read",
        "path",
        "query",
        "receive",
        "request_id",
        "scope",
        "trace",
    )

    def __init__(self, scope: Scope, receive: Receive, request_id: str = "") -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        self.request_id = request_id
        self._headers: dict[bytes, bytes] | None = None
        # Called once the whole body is in: from then on only a disconnect can arrive.
        self.on_body_read: Callable[[], None] | None = None
        self.trace: RequestTrace | None = None  # the request's SERVER span (tracing on)

    def header(self, name: bytes) -> bytes | None:
        """A request header by lower-case name (the last one wins if repeated)."""
        if self._headers is None:
            self._headers = dict(self.scope["headers"])
        return self._headers.get(name)

    async def body(self, limit: int) -> bytes:
        """The whole body; raises 413 as soon as it is known to exceed ``limit`` bytes."""
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise payload_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise payload_too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if self.on_body_read is not None:
            self.on_body_read()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json_body(self, limit: int) -> Any:
        return parse_json(await self.body(limit))


# orjson reads documents nested up to 1024 levels but writes at most 254: a body deeper than
# that could be parsed here and then fail when it is forwarded, so it is refused up front.
MAX_JSON_DEPTH = 254


def parse_json(raw: bytes) -> Any:
    """The JSON document of a request body; 400 when it is empty, not JSON, or nested deeper
    than ``MAX_JSON_DEPTH`` levels."""
    if not raw.strip():
        raise BadRequest("Request body is empty; a JSON object is required.")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    # Counting brackets is a C-speed upper bound on the depth; past it, writing the document
    # is the check, at C speed too (orjson refuses what it cannot write).  A coding agent's
    # turn has hundreds of containers or more: ``uv run python -m bench.choices`` times both ways.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        try:
            orjson.dumps(document)
        except orjson.JSONEncodeError:
            raise BadRequest(
                f"Request body is nested deeper than {MAX_JSON_DEPTH} levels.",
                code="invalid_json",
            ) from None
    return document


class ClientGone(Exception):
    """The client closed the connection before the request was answered."""


class Routed(Protocol):
    """What the edge needs to know of a routed request (see routing/router.py ``Call``)."""

    upstream_s: float

    @property
    def trace(self) -> RequestTrace | None:
        """The request's trace, when it is traced."""
        ...

    @property
    def served_by(self) -> tuple[str, str] | None:
        """(provider, model) that answered, if any."""
        ...

    def finish(self) -> None:
        """Settle the request's quotas if nothing did (reservations kept: usage unknown)."""
        ...


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: Headers = field(default_factory=list)
    call: Routed | None = None  # the routed call, when an upstream was involved


@dataclass(slots=True)
class StreamResponse:
    """A response whose body is produced as it is sent (server-sent events)."""

    status: int
    chunks: AsyncIterator[bytes]
    headers: Headers = field(default_factory=list)
    call: Routed | None = None
    final: bytes = b""  # a piece ending with this is the last one (saves one empty send)
    # The event that ends a stream broken after its first piece (chat's data: {"error"}).
    error_event: Callable[[GatewayError], bytes] = sse_error_event


def error_response(error: GatewayError) -> Response:
    return Response(status_of(error), error_body(error), error_headers(error))


def anthropic_error_response(error: GatewayError) -> Response:
    """The error in Anthropic's shape (the Messages API's routes)."""
    return Response(
        anthropic_status(error), anthropic_error_body(error), anthropic_error_headers(error)
    )


async def send_response(
    send: Send, response: Response, extra: Headers, respond: Respond | None = None
) -> None:
    """``response`` with the ``extra`` headers: in one write through the server's ``respond``
    when it offers one and can, else as two ASGI messages."""
    headers = response.headers + extra if extra else response.headers[:]
    if respond is not None and respond(send, response.status, headers, response.body):
        return
    headers.append((b"content-length", b"%d" % len(response.body)))  # no chunked framing
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
