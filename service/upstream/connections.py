"""HTTP/1.1 keep-alive connections to providers, pooled per origin: asyncio transports with
httptools' response parser.

One exchange at a time per connection.  A connection goes back to its pool only when its
answer was read to the end and the server keeps it alive; a response abandoned half-way (a
client that left, a hedge that lost) closes its connection, which is what cancels the
upstream request.  Nothing here knows about providers or failover: failures are raised as
``ConnectionFailed`` / ``ProtocolFailed`` and translated by ``service.upstream.client``.

aiohttp's client, which this replaces, spends about three times the CPU per request:
``uv run python -m bench.upstream_client`` measures both side by side.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools

IDLE_S = 30.0  # a pooled connection unused for longer is closed, not reused
_PAUSE_BYTES = 1 << 20  # a stream's unread bytes above this pause reading from the socket


class ConnectionFailed(Exception):
    """No connection, or the connection broke before the whole answer arrived."""


class ProtocolFailed(Exception):
    """The server's bytes are not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request goes: scheme, host and port, and the path part of its URL."""

    tls: bool
    host: str
    port: int
    authority: bytes  # the Host header's value

    @property
    def key(self) -> tuple[bool, str, int]:
        return (self.tls, self.host, self.port)


def split_url(url: str) -> tuple[Origin, bytes]:
    """(origin, request target) of an absolute http(s) URL; ValueError for anything else."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    authority, slash, path = rest.partition("/")
    target = ("/" + path) if slash else "/"
    host, port = authority, 443 if scheme == "https" else 80
    if authority.startswith("["):  # an IPv6 literal
        end = authority.find("]")
        host = authority[1:end]
        if authority[end + 1 : end + 2] == ":":
            port = int(authority[end + 2 :])
    elif ":" in authority:
        host, _, digits = authority.rpartition(":")
        port = int(digits)
    if not host:
        raise ValueError(f"no host in URL: {url!r}")
    origin = Origin(scheme == "https", host, port, authority.encode("idna"))
    return origin, target.encode()


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; ``exchange`` sends a request, then the answer is read with
    ``head``, and ``read`` or ``chunks``."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: Exception | None = None
        self.status = 0
        self.content_type = b""
        self.retry_after: str | None = None
        self.cache_control: str | None = None
        self._encoding = b""
        self._until_close = True  # no length nor chunked framing: the body ends at close
        self._header_name = b""
        self.headers_done = False
        self.complete = False
        self.closed = False
        self.reused = False  # the current exchange runs on a connection used before
        self.got_bytes = False  # any byte of the current answer arrived
        self.idle_since = 0.0
        self.tunnel = False  # waiting for a proxy's answer to CONNECT
        self._keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.tunnel:
                return  # a proxy's 200 to CONNECT: the bytes after it belong to the tunnel
            self._fail(ProtocolFailed("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailed(f"invalid HTTP from the server: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self.headers_done and self._until_close and exc is None:
            self.on_message_complete()  # a body delimited by the connection's end
            return
        self._fail(
            ConnectionFailed(
                f"the connection closed: {exc!r}" if exc else "the server closed the connection"
            )
        )

    def pause_writing(self) -> None:  # the request is small: nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value
        elif lower == b"retry-after":
            self.retry_after = value.decode("latin-1")
        elif lower == b"cache-control":
            self.cache_control = value.decode("latin-1")
        elif lower == b"content-encoding":
            self._encoding = value.strip().lower()
        elif lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._until_close = False

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_BYTES and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked here: once this callback returns, the parser is reset for the next answer.
        self._keep_alive = self._parser.should_keep_alive() and not self._until_close
        self._wake()

    # -- the exchange --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    async def _wait(self, timeout_s: float | None = None) -> None:
        """Until the parser makes progress; TimeoutError after ``timeout_s`` without any."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        timer = None if timeout_s is None else self._loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def exchange(self, request: bytes) -> None:
        """Send one request (head and body in one write) on an idle connection."""
        assert self._transport is not None
        self.status = 0
        self.content_type = b""
        self.retry_after = None
        self.cache_control = None
        self._encoding = b""
        self._until_close = True
        self.headers_done = self.complete = self.got_bytes = self._keep_alive = False
        self._chunks.clear()
        self._buffered = 0
        self._transport.write(request)

    async def head(self, by: float | None = None) -> int:
        """Wait for the status line and headers; returns the status.  TimeoutError if they
        have not arrived by ``by`` (the loop's time)."""
        while not self.headers_done:
            await self._wait(None if by is None else by - self._loop.time())
        return self.status

    async def read(self, idle_s: float | None = None, by: float | None = None) -> bytes:
        """The whole body (decoded when the server compressed it); each wait for more bytes
        lasts at most ``idle_s``, and none past ``by`` (the loop's time)."""
        while not self.complete:
            wait_s = idle_s
            if by is not None:
                left = by - self._loop.time()
                wait_s = left if wait_s is None else min(wait_s, left)
            await self._wait(wait_s)
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._encoding:
            body = _decompressor(self._encoding).decompress(body)
        return body

    async def chunks(self, idle_s: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, one piece per read of the socket (or more, if they
        queued); each wait for more bytes lasts at most ``idle_s`` (TimeoutError)."""
        inflate = _decompressor(self._encoding) if self._encoding else None
        while True:
            if self._chunks:
                piece = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                yield inflate.decompress(piece) if inflate is not None else piece
            elif self.complete:
                return
            else:
                await self._wait(idle_s)

    @property
    def reusable(self) -> bool:
        return self.complete and not self.closed and self._error is None and self._keep_alive

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _decompressor(encoding: bytes) -> zlib._Decompress:
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == b"deflate":
        return zlib.decompressobj()
    raise ProtocolFailed(f"unsupported content-encoding {encoding.decode('latin-1')!r}")


class Pool:
    """Idle keep-alive connections per origin (through a proxy when one applies)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._idle: dict[tuple[object, ...], list[Connection]] = {}
        self._tls = tls or ssl.create_default_context()

    async def connect(
        self, origin: Origin, proxy: Origin | None, timeout_s: float, fresh: bool = False
    ) -> Connection:
        """An idle connection to ``origin``, or a new one made within ``timeout_s``."""
        if not fresh:
            idle = self._idle.get((origin.key, proxy.key if proxy else None))
            if idle:
                now = time.monotonic()
                while idle:
                    connection = idle.pop()
                    if not connection.closed and now - connection.idle_since < IDLE_S:
                        connection.reused = True
                        return connection
                    connection.close()
        try:
            async with asyncio.timeout(timeout_s):
                connection = await self._open(origin, proxy)
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(
                f"cannot connect to {origin.host}:{origin.port}: {exc!r}"
            ) from None
        connection.reused = False
        return connection

    async def _open(self, origin: Origin, proxy: Origin | None) -> Connection:
        loop = asyncio.get_running_loop()
        if proxy is None:
            _, connection = await loop.create_connection(
                Connection,
                origin.host,
                origin.port,
                ssl=self._tls if origin.tls else None,
                server_hostname=origin.host if origin.tls else None,
            )
            return connection
        transport, connection = await loop.create_connection(
            Connection,
            proxy.host,
            proxy.port,
            ssl=self._tls if proxy.tls else None,
            server_hostname=proxy.host if proxy.tls else None,
        )
        if not origin.tls:
            return connection  # plain HTTP through a proxy: absolute URLs, see Request
        # HTTPS through a proxy: a CONNECT tunnel, then TLS with the origin inside it.
        connection.tunnel = True
        connection.exchange(
            b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
            % (origin.host.encode("idna"), origin.port, origin.host.encode("idna"), origin.port)
        )
        status = await connection.head()
        if status != 200:
            connection.close()
            raise ConnectionFailed(f"the proxy refused the tunnel to {origin.host}: HTTP {status}")
        tunnelled = Connection()
        tls = await loop.start_tls(transport, tunnelled, self._tls, server_hostname=origin.host)
        if tls is None:
            raise ConnectionFailed("the TLS handshake through the proxy failed")
        tunnelled.connection_made(tls)  # start_tls does not call it
        return tunnelled

    def release(self, connection: Connection, origin: Origin, proxy: Origin | None) -> None:
        """Give back a connection whose answer was read; one that cannot serve again closes."""
        if not connection.reusable:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault((origin.key, proxy.key if proxy else None), []).append(connection)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
