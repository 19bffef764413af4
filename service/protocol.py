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
    connections open).  A connection told to shut down also marks the replica draining."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._read_timeout_s: float = getattr(config, "read_timeout_s", 30.0)
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, HeadHeldTransport(transport, self.loop)))
        self._arm_read_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # An ASGI extension of this server's own (uvicorn sets no other).
        extensions: dict[str, Any] = {DISCONNECT: Disconnect()}
        self.scope["extensions"] = cast(dict[str, dict[object, object]], extensions)
        self._arm_read_timer()

    def on_message_complete(self) -> None:
        self._disarm_read_timer()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            signal = cycle.scope.get("extensions", {}).get(DISCONNECT)
            if isinstance(signal, Disconnect):
                signal.fire()

    def shutdown(self) -> None:
        mark_draining(self.app)
        super().shutdown()

    def _arm_read_timer(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self._read_timeout_s, self._read_timed_out)

    def _disarm_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            return  # already answering (say, a 413 before the body): not a slow client
        self.transport.close()
