"""Type aliases shared across layers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]  # as the ASGI spec (and Starlette) type them
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


# An ASGI extension of the gateway's own HTTP protocol (service/protocol.py), under the scope's
# ``extensions``: a ``Disconnect`` that the server fires when the client's connection is lost
# before the response is complete.
DISCONNECT = "best.disconnect"


class Disconnect:
    """The server's signal that the client left: the app sets ``callback`` while it wants to
    hear of it, and the server calls it once.  It spares each request a task waiting on
    ``receive()`` for ``http.disconnect``."""

    __slots__ = ("callback",)

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None

    def fire(self) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()
