"""The pooled HTTP/1.1 connections against a raw loopback server: keep-alive reuse, a pooled
connection the server closed, bodies framed by length, chunks or the connection's end,
compressed bodies, abandoned answers, plain-HTTP proxies, and broken servers."""

from __future__ import annotations

import asyncio
import functools
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from service.upstream.client import UpstreamClient
from service.upstream.errors import CONNECT, UpstreamFailure
from tests.topologies import TlsFiles, make_tls_files

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async test in a fresh event loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class RawServer:
    """Reads requests (head + Content-Length body) and answers with ``handler``, which
    returns whether to keep the connection; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                if not await self.handler(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[RawServer, str]]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield raw, f"http://127.0.0.1:{port}"
    finally:
        server.close()


@asynccontextmanager
async def started() -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient()
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def _answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"".join(extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def _ok(request: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(_answer(b'{"ok": true}'))
    await writer.drain()
    return True


@in_loop
async def test_keep_alive_connections_are_reused() -> None:
    async with serving(_ok) as (server, base), started() as client:
        for _ in range(5):
            answer = await client.post(f"{base}/v1/x", {"Authorization": "Bearer k"}, b"{}", 5)
            assert answer.status == 200 and answer.body == b'{"ok": true}'
        assert server.connections == 1
        assert len(server.requests) == 5
        first = server.requests[0]
        assert first.startswith(b"POST /v1/x HTTP/1.1\r\n")
        assert b"\r\nAuthorization: Bearer k\r\n" in first
        assert first.endswith(b"Content-Length: 2\r\n\r\n{}")


@in_loop
async def test_a_pooled_connection_the_server_closed_is_replaced_once() -> None:
    async def once(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(b"1"))
        await writer.drain()
        return False  # the server closes every connection after one answer

    async with serving(once) as (server, base), started() as client:
        assert (await client.post(f"{base}/a", {}, b"", 5)).body == b"1"
        await server.closed.wait()
        await asyncio.sleep(0.05)  # the close reaches the client's side
        assert (await client.post(f"{base}/a", {}, b"", 5)).body == b"1"
        assert server.connections == 2


@in_loop
async def test_chunked_and_until_close_bodies_and_gzip() -> None:
    async def framing(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b" /chunked " in request:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            await writer.drain()
            return True
        if b" /gzip " in request:
            writer.write(_answer(gzip.compress(b"unzipped"), b"Content-Encoding: gzip\r\n"))
            await writer.drain()
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        return False

    async with serving(framing) as (_, base), started() as client:
        assert (await client.post(f"{base}/chunked", {}, b"", 5)).body == b"hello world"
        assert (await client.post(f"{base}/gzip", {}, b"", 5)).body == b"unzipped"
        assert (await client.post(f"{base}/close", {}, b"", 5)).body == b"until the end"


@in_loop
async def test_a_stream_arrives_in_pieces_and_an_abandoned_one_closes_its_connection() -> None:
    release = asyncio.Event()

    async def sse(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async with serving(sse) as (server, base), started() as client:
        stream = await client.open_stream(f"{base}/s", {}, b"{}", 5)
        assert stream.status == 200 and stream.content_type == b"text/event-stream"
        pieces = stream.chunks()
        assert await pieces.__anext__() == b"data: 1"
        release.set()
        assert await pieces.__anext__() == b"data: 2"
        with pytest.raises(StopAsyncIteration):
            await pieces.__anext__()
        stream.close()  # read to the end: pooled again
        release.clear()
        again = await client.open_stream(f"{base}/s", {}, b"{}", 5)
        assert server.connections == 1
        assert await again.chunks().__anext__() == b"data: 1"
        again.close()  # abandoned half-way: the server sees the connection close
        release.set()
        await asyncio.wait_for(server.closed.wait(), 2)
        assert len(server.requests) == 2


@in_loop
async def test_a_connection_cut_mid_body_is_a_connect_failure() -> None:
    async def cut(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()
        return False

    async with serving(cut) as (_, base), started() as client:
        with pytest.raises(UpstreamFailure) as caught:
            await client.post(f"{base}/x", {}, b"", 5)
        assert caught.value.reason == CONNECT


@in_loop
async def test_garbage_from_the_server_is_a_connect_failure() -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()
        return False

    async with serving(garbage) as (_, base), started() as client:
        with pytest.raises(UpstreamFailure) as caught:
            await client.post(f"{base}/x", {}, b"", 5)
        assert caught.value.reason == CONNECT


@in_loop
async def test_a_plain_http_proxy_gets_the_absolute_url(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(_ok) as (proxy, base):
        monkeypatch.setenv("HTTP_PROXY", base)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with started() as client:
            answer = await client.post("http://models.example:8000/v1/chat", {}, b"{}", 5)
        assert answer.status == 200
        assert proxy.requests[0].startswith(
            b"POST http://models.example:8000/v1/chat HTTP/1.1\r\nHost: models.example:8000\r\n"
        )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _contexts(files: TlsFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.cert, files.key)
    client = ssl.create_default_context(cafile=str(files.ca))
    return server, client


@in_loop
async def test_https_directly_and_through_a_connect_tunnel(
    tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_tls, client_tls = _contexts(tls_files)
    raw = RawServer(_ok)
    origin = await asyncio.start_server(raw._serve, "127.0.0.1", 0, ssl=server_tls)
    origin_port = origin.sockets[0].getsockname()[1]
    tunnels: list[bytes] = []

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        tunnels.append(head)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", origin_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{origin_port}/v1/chat"
    try:
        client = UpstreamClient(tls=client_tls)
        await client.start()
        assert (await client.post(url, {}, b"{}", 5)).body == b'{"ok": true}'
        await client.close()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client = UpstreamClient(tls=client_tls)
        await client.start()
        assert (await client.post(url, {}, b"{}", 5)).body == b'{"ok": true}'
        assert (await client.post(url, {}, b"{}", 5)).body == b'{"ok": true}'
        await client.close()
    finally:
        origin.close()
        proxy.close()
    where = f"127.0.0.1:{origin_port}"
    assert tunnels == [f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n\r\n".encode()]
    assert raw.connections == 2  # one direct, one tunnelled and reused
