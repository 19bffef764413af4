"""The only code that talks to providers: pooled keep-alive HTTP/1.1 (``connections``).

One request in, one response out; connection errors become ``UpstreamFailure`` here and
nowhere else.  Policy (which provider, retries, cooldowns) lives in ``routing``.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from service.types import HeadersPlus
from service.upstream.connections import (
    Connection,
    ConnectionFailed,
    Origin,
    Pool,
    ProtocolFailed,
    split_url,
)
from service.upstream.errors import BAD_BODY, CONNECT, SERVER_ERROR, TIMEOUT, UpstreamFailure

_ROUTES_MAX = 4096  # URLs whose origin, target and proxy are remembered
_ENCODED_MAX = 4096  # header mappings whose encoding is remembered


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: bytes
    retry_after: str | None
    cache_control: str | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    origin: Origin
    target: bytes  # the request line's target: a path, or the whole URL through an HTTP proxy
    proxy: Origin | None
    post: bytes  # "POST <target> HTTP/1.1" and the Host line, the start of every POST

    def line(self, method: str) -> bytes:
        """The request line and the Host header."""
        if method == "POST":
            return self.post
        return _request_line(method, self.target, self.origin.authority)


def _request_line(method: str, target: bytes, authority: bytes) -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target, authority)


class UpstreamStream:
    """An open streaming response; iterate ``chunks()`` and always ``close()``."""

    __slots__ = (
        "_connection",
        "_idle_s",
        "_pool",
        "_route",
        "content_type",
        "retry_after",
        "status",
    )

    def __init__(self, connection: Connection, pool: Pool, route: _Route, idle_s: float) -> None:
        self._connection = connection
        self._pool = pool
        self._route = route
        self._idle_s = idle_s
        self.status = connection.status
        self.content_type = connection.content_type
        self.retry_after = connection.retry_after

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._connection.chunks(self._idle_s):
                yield chunk
        except TimeoutError:
            raise UpstreamFailure(TIMEOUT, "upstream stream stalled") from None
        except (ConnectionFailed, ProtocolFailed) as exc:
            raise UpstreamFailure(CONNECT, f"upstream stream broke: {exc}") from None

    async def read(self) -> bytes:
        try:
            return await self._connection.read(self._idle_s)
        except TimeoutError:
            raise UpstreamFailure(TIMEOUT, "upstream timed out") from None
        except (ConnectionFailed, ProtocolFailed) as exc:
            raise UpstreamFailure(CONNECT, f"upstream connection failed: {exc}") from None

    def close(self) -> None:
        """Done with the answer: a connection read to its end is pooled again; one that is
        not (the client left, a hedge lost) is closed, which cancels the upstream request."""
        self._pool.release(self._connection, self._route.origin, self._route.proxy)


def _lines(headers: Mapping[str, str]) -> bytes:
    return b"".join(
        b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.items()
    )


class UpstreamClient:
    """A pooled HTTP client shared by every request of the process."""

    def __init__(self, connect_timeout_s: float = 10.0, tls: Any = None) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._tls = tls
        self._pool: Pool | None = None
        self._routes: dict[str, _Route] = {}
        self._encoded: dict[int, tuple[Mapping[str, str], bytes]] = {}

    async def start(self) -> None:
        self._pool = Pool(self._tls)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _header_block(self, headers: Mapping[str, str]) -> bytes:
        """``headers`` as HTTP/1.1 header lines, encoded once per mapping: a candidate's
        headers are one mapping for the life of the configuration.  A ``HeadersPlus`` is its
        base's lines (encoded once) and its own (each time)."""
        if type(headers) is HeadersPlus:
            block = self._header_block(headers.base)
            for name, value in headers.own.items():
                block += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
            return block
        found = self._encoded.get(id(headers))
        if found is not None and found[0] is headers:
            return found[1]
        block = _lines(headers)
        if len(self._encoded) >= _ENCODED_MAX:
            self._encoded.clear()
        # The mapping is kept with its bytes, so its id cannot name another mapping meanwhile.
        self._encoded[id(headers)] = (headers, block)
        return block

    def _route(self, url: str) -> _Route:
        """Where ``url`` goes: its origin, the request target, and the HTTP(S)_PROXY that
        applies (honouring NO_PROXY), remembered per URL."""
        route = self._routes.get(url)
        if route is None:
            try:
                origin, target = split_url(url)
            except ValueError as exc:
                raise UpstreamFailure(CONNECT, str(exc)) from None
            scheme = "https" if origin.tls else "http"
            proxies = urllib.request.getproxies_environment()
            bypass = urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                origin.host, proxies
            )
            proxy_url = None if bypass else proxies.get(scheme)
            proxy = None
            if proxy_url:
                proxy, _ = split_url(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
                if not origin.tls:
                    target = url.encode()  # a plain-HTTP proxy takes the absolute URL
            post = _request_line("POST", target, origin.authority)
            route = _Route(origin, target, proxy, post)
            if len(self._routes) < _ROUTES_MAX:
                self._routes[url] = route
        return route

    async def _send(
        self,
        method: str,
        route: _Route,
        headers: Mapping[str, str],
        body: bytes | None,
        by: float,
    ) -> Connection:
        """Send the request; returns the connection once the answer's headers arrived, or
        raises TimeoutError if they have not by ``by`` (the loop's time).  A pooled
        connection that the server closed meanwhile (no byte of an answer) is replaced by a
        new one, once."""
        pool = self._require_pool()
        loop = asyncio.get_running_loop()
        head = [route.line(method), self._header_block(headers)]
        if body is not None:
            head.append(b"Content-Length: %d\r\n\r\n" % len(body))
            head.append(body)
        else:
            head.append(b"\r\n")
        request = b"".join(head)
        fresh = False
        while True:
            connect_s = min(self._connect_timeout_s, by - loop.time())
            connection = await pool.connect(route.origin, route.proxy, connect_s, fresh)
            connection.exchange(request)
            try:
                await connection.head(by)
            except ConnectionFailed:
                if connection.reused and not connection.got_bytes and not fresh:
                    fresh = True
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return connection

    def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout_s: float,
        first_byte_s: float | None = None,
    ) -> Awaitable[UpstreamResponse]:
        """POST and read the whole answer within ``timeout_s``; with ``first_byte_s``, the
        status line must arrive within it (a TIMEOUT failure otherwise, the request closed)."""
        return self._request("POST", url, headers, body, timeout_s, first_byte_s)

    async def open_stream(
        self, url: str, headers: Mapping[str, str], body: bytes, idle_timeout_s: float
    ) -> UpstreamStream:
        """POST and return once the status line and headers arrived; each later read of the
        body may wait at most ``idle_timeout_s``."""
        route = self._route(url)
        by = asyncio.get_running_loop().time() + idle_timeout_s
        try:
            # Connecting, the TLS handshake and the headers together get the attempt's own
            # bound, not the client's fixed connect timeout.
            connection = await self._send("POST", route, headers, body, by)
        except TimeoutError:
            raise UpstreamFailure(
                TIMEOUT, f"upstream did not answer within {idle_timeout_s:g}s"
            ) from None
        except (ConnectionFailed, ProtocolFailed) as exc:
            raise UpstreamFailure(CONNECT, f"upstream connection failed: {exc}") from None
        return UpstreamStream(connection, self._require_pool(), route, idle_timeout_s)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> UpstreamResponse:
        """Any request, its whole answer read within ``timeout_s``; any status is returned
        (a failure to get one raises UpstreamFailure)."""
        return await self._request(method, url, headers, body, timeout_s)

    async def get_json(self, url: str, headers: Mapping[str, str], timeout_s: float) -> Any:
        """GET a JSON document (model lists, leaderboards); raises UpstreamFailure."""
        response = await self._request("GET", url, headers, None, timeout_s)
        if response.status != 200:
            raise UpstreamFailure(
                SERVER_ERROR, f"GET {url} answered HTTP {response.status}", status=response.status
            )
        try:
            return orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(BAD_BODY, f"GET {url} answered invalid JSON") from None

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
        first_byte_s: float | None = None,
    ) -> UpstreamResponse:
        route = self._route(url)
        started = asyncio.get_running_loop().time()
        first_byte = first_byte_s is not None and 0 < first_byte_s < timeout_s
        head_by = started + (first_byte_s if first_byte and first_byte_s else timeout_s)
        connection: Connection | None = None
        try:
            # Bounded by the waits themselves (one timer per wait for bytes, rarely more than
            # one), not by an asyncio.timeout around it all.
            connection = await self._send(method, route, headers, body, head_by)
            first_byte = False
            answer = await connection.read(by=started + timeout_s)  # the rest of the answer
        except TimeoutError:
            if connection is not None:
                connection.close()
            if first_byte:
                raise UpstreamFailure(
                    TIMEOUT, f"{url} sent no first byte within {first_byte_s:g}s"
                ) from None
            raise UpstreamFailure(TIMEOUT, f"{url} did not answer within {timeout_s:g}s") from None
        except (ConnectionFailed, ProtocolFailed) as exc:
            raise UpstreamFailure(CONNECT, f"{url}: connection failed: {exc}") from None
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        self._require_pool().release(connection, route.origin, route.proxy)
        return UpstreamResponse(
            connection.status,
            answer,
            connection.content_type,
            connection.retry_after,
            connection.cache_control,
        )

    def _require_pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        return self._pool
