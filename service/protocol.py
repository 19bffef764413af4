"""The HTTP/1.1 protocol and uvicorn config of the gateway's server.

Kept apart from ``service.server``: each worker process unpickles these before it can answer
its supervisor's health checks, so this module imports nothing heavy (no app, no HTTP client).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from service.types import DISCONNECT, RESPOND, Disconnect, Headers, Send


class ServerConfig(uvicorn.Config):
    """uvicorn's config plus the gateway's request read bound (pickled to each worker)."""

    read_timeout_s: float = 30.0


def mark_draining(asgi: Any) -> None:
    """Mark the gateway behind ``asgi`` (inside whatever middleware uvicorn wrapped around
    the App) as draining."""
    for _ in range(8):
        gateway = getattr(asgi, "gateway", None)
        if gateway is not None:
            gateway.draining = True
            return
        asgi = getattr(asgi, "app", None)


class HeadHeldTransport:
    """The connection's transport, except that a response's head (status line and headers,
    which uvicorn writes on its own) waits for the response's first body write, and both
    leave in one write: one system call and one TCP segment instead of two.  Nothing waits
    longer than the current turn of the event loop."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 "):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def write_whole(self, data: bytes) -> None:
        """A whole response, head and body: written now."""
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 with a bound on reading a request: a connection that has not sent
    its headers and body within ``read_timeout_s`` is closed (slow clients cannot hold
    connections open).  A connection told to shut down also marks the replica draining.

    One timer per connection, not per request, bounds both that and an idle keep-alive
    connection (``timeout_keep_alive``): a request only notes when its reading, or the
    connection's idleness, began; the timer, when it fires, closes a connection past its
    bound or waits again for the rest of it."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._read_timeout_s: float = getattr(config, "read_timeout_s", 30.0)
        self._reading = True  # a new connection owes its first request
        self._since = 0.0  # when the reading, or the idleness, began (loop time)
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, HeadHeldTransport(transport, self.loop)))
        self._since = self.loop.time()
        self._watch_in(self._read_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The ASGI extensions of this server's own (uvicorn sets no other).
        extensions: dict[str, Any] = {DISCONNECT: Disconnect(), RESPOND: respond}
        self.scope["extensions"] = cast(dict[str, dict[object, object]], extensions)
        self._reading = True
        self._since = self.loop.time()

    def on_message_complete(self) -> None:
        self._reading = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """As uvicorn's, except that the idle bound is the watchdog's, not a new timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        self._since = self.loop.time()
        if self.pipeline:  # a pipelined request waited for this response
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            signal = cycle.scope.get("extensions", {}).get(DISCONNECT)
            if isinstance(signal, Disconnect):
                signal.fire()

    def shutdown(self) -> None:
        mark_draining(self.app)
        super().shutdown()

    def _watch_in(self, delay_s: float) -> None:
        self._watchdog = self.loop.call_later(delay_s, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if answering:
            # Not a slow client, even if its body is still coming (a 413 goes out before
            # it): nothing to bound until the response ends.
            self._watch_in(self._read_timeout_s)
            return
        bound = self._read_timeout_s if self._reading else self.timeout_keep_alive
        left = self._since + bound - self.loop.time()
        if left > 0:
            self._watch_in(left)
        elif self._reading or cycle is None or cycle.response_complete:
            self.transport.close()
        else:  # the request is in, its answer not begun: the app's timeouts bound it
            self._watch_in(self._read_timeout_s)


# The bytes uvicorn's checks allow in a header's name and value (its regexes find nothing in
# them), for ``bytes.translate``: a fraction of the regexes' time on a response's headers
# (``uv run python -m bench.choices``).
HEADER_NAME_BYTES = bytes(c for c in range(256) if not HEADER_RE.search(bytes((c,))))
HEADER_VALUE_BYTES = bytes(c for c in range(256) if not HEADER_VALUE_RE.search(bytes((c,))))
# Headers the app leaves to ``respond`` (their framing is its own), or that uvicorn's own
# ``send`` must see.
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))


def respond(send: Send, status: int, headers: Headers, body: bytes | None) -> bool:
    """The whole response in one write, as uvicorn's ``send`` (a request's cycle's own) writes
    a start and a last body message, without their two calls, two messages and per-header
    work: the headers are checked in one pass each for names and values.  With a body of
    None, the head of a chunked stream, as ``send`` writes a start (held until the first
    piece, which ``send`` frames).  False (nothing done) where ``send`` must do it: a
    ``send`` of something else (a middleware's), a response begun, a client not reading, an
    access log, a status without a body, a stream's HEAD, or a framing header."""
    cycle = getattr(send, "__self__", None)
    if (
        cycle.__class__ is not RequestResponseCycle
        or cycle.response_started
        or cycle.flow.write_paused
        or cycle.access_log
        or not 200 <= status < 600
        or status in (204, 304)
    ):
        return False
    names = [name for name, _ in headers]
    head_only = cycle.scope["method"] == "HEAD"
    if not _FRAMING.isdisjoint(names) or (body is None and head_only):
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.disconnected:
        return True  # as ``send``: nobody to write to
    # uvicorn's checks, in one C pass over the names joined and one over the values joined
    # with a tab (allowed in a value): what is left after deleting the allowed bytes.
    if b"".join(names).translate(None, HEADER_NAME_BYTES) or b"\t".join(
        [value for _, value in headers]
    ).translate(None, HEADER_VALUE_BYTES):
        raise RuntimeError("Invalid HTTP header.")
    lines = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        lines += (name, b": ", value, b"\r\n")
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if body is None:
        lines.append(b"transfer-encoding: chunked\r\n")
    else:
        lines.append(b"content-length: %d\r\n" % len(body))
    if not cycle.keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if body is None:
        cycle.chunked_encoding = True
        cycle.transport.write(b"".join(lines))  # held for the first piece
        return True
    if not head_only:
        lines.append(body)
    cycle.response_complete = True
    transport = cycle.transport
    if isinstance(transport, HeadHeldTransport):
        transport.write_whole(b"".join(lines))
    else:
        transport.write(b"".join(lines))
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()
    return True
