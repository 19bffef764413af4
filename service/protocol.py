"""The HTTP/1.1 protocol and uvicorn config of the gateway's server.

Kept apart from ``service.server``: each worker process unpickles these before it can answer
its supervisor's health checks, so this module imports nothing heavy (no app, no aiohttp).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class GatewayProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 with a bound on reading a request: a connection that has not sent
    its headers and body within ``read_timeout_s`` is closed (slow clients cannot hold
    connections open).  A connection told to shut down also marks the replica draining."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._read_timeout_s: float = getattr(config, "read_timeout_s", 30.0)
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_read_timer()

    def on_message_complete(self) -> None:
        self._disarm_read_timer()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        super().connection_lost(exc)

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
