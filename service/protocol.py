"""The HTTP/1.1 protocol and uvicorn config of the gateway's server.

Kept apart from ``service.server``: each worker process unpickles these before it can answer
its supervisor's health checks, so this module imports nothing heavy (no app, no HTTP client).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.types import DISCONNECT, Disconnect


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
        # An ASGI extension of this server's own (uvicorn sets no other).
        extensions: dict[str, Any] = {DISCONNECT: Disconnect()}
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
