"""Type aliases shared across layers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
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
# Another: a ``Respond`` under ``RESPOND`` writes a whole response at once (the request's
# ``send``, the status, headers without a length, the body), or with a body of None the head
# of a stream whose pieces then go through ``send``; it answers False when it cannot (the app
# then sends through ``send`` alone).  One function for every request: nothing of a
# request's is kept in its scope (no reference cycle for the collector).
RESPOND = "best.respond"
Respond = Callable[[Send, int, Headers, bytes | None], bool]


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


class HeadersPlus(Mapping[str, str]):
    """An upstream request's headers: a mapping shared by many requests (a provider's, which
    the upstream client encodes once) plus a few of this request's own (a traced attempt's
    ``traceparent``), encoded each time.  Made by ``headers_plus``: ``own`` names no header
    of ``base``."""

    __slots__ = ("base", "own")

    def __init__(self, base: Mapping[str, str], own: dict[str, str]) -> None:
        self.base = base
        self.own = own

    def __getitem__(self, name: str) -> str:
        value = self.own.get(name)
        return self.base[name] if value is None else value

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from self.own

    def __len__(self) -> int:
        return len(self.base) + len(self.own)


def headers_plus(base: Mapping[str, str], own: dict[str, str]) -> Mapping[str, str]:
    """``base`` with ``own`` added, ``own`` winning; a ``HeadersPlus`` unless they share a
    name (a provider configured with one of the request's own headers)."""
    for name in own:
        if name in base:
            return {**base, **own}
    return HeadersPlus(base, own)
