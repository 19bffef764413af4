"""The server's HTTP/1.1 protocol (``service/protocol.py``) on a real uvicorn server: its one
timer per connection bounds a request's reading and a keep-alive connection's idleness, and
never an answer in progress; pipelined requests are answered in order; a response written
whole (``RESPOND``) is framed as uvicorn frames one, and refuses a header that would split
it."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn

from service.protocol import GatewayProtocol, ServerConfig
from service.types import RESPOND

pytestmark = pytest.mark.slow

BOUND_S = 1.0  # both the read timeout and the keep-alive timeout of these servers
REQUEST = b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers ``/<seconds>`` after that many seconds, with the path as the body."""
    if scope["type"] != "http":
        return
    path = scope["path"].strip("/")
    await asyncio.sleep(float(path or 0))
    body = path.encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# What ``respond`` answered, per path, in the order asked.
RESPONDED: list[tuple[str, bool]] = []
WHOLE_HEADERS = {
    "whole": [(b"content-type", b"text/plain"), (b"x-a", b"1")],
    "framed": [(b"content-length", b"5")],  # left to uvicorn's send
    "split": [(b"x-a", b"1\r\nx-injected: 1")],
    "spaced": [(b"x-injected: 1\r\nx-a", b"1")],
    "stream": [(b"content-type", b"text/event-stream")],  # a head, then pieces through send
}


async def _whole_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers ``/<kind>`` with ``hello`` through ``RESPOND`` (kinds: ``WHOLE_HEADERS``), or
    through ``send`` where it answers False."""
    if scope["type"] != "http":
        return
    kind = scope["path"].strip("/")
    headers = WHOLE_HEADERS[kind]
    if kind == "stream":
        RESPONDED.append((kind, scope["extensions"][RESPOND](send, 200, headers, None)))
        for piece, more in ((b"hel", True), (b"lo", True), (b"", False)):
            await send({"type": "http.response.body", "body": piece, "more_body": more})
        return
    done = scope["extensions"][RESPOND](send, 200, headers, b"hello")
    RESPONDED.append((kind, done))
    if not done:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello"})


def _serve(test: Callable[[int], Awaitable[None]], app: Any = _app) -> None:
    """Runs ``test(port)`` beside a server of ``GatewayProtocol`` with ``BOUND_S`` bounds."""

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = ServerConfig(
            app,
            http=GatewayProtocol,
            lifespan="off",
            log_config=None,
            access_log=False,  # as the gateway's server (an access log is send's to write)
            timeout_keep_alive=BOUND_S,  # type: ignore[arg-type]
        )
        config.read_timeout_s = BOUND_S
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event)
            await asyncio.sleep(0.01)
        try:
            await test(port)
        finally:
            server.should_exit = True
            await serving

    asyncio.run(main())


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


async def _closed_after(reader: asyncio.StreamReader, within_s: float) -> float:
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), within_s) == b""
    return time.monotonic() - started


def test_an_idle_keep_alive_connection_is_closed_after_its_bound() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST % b"0")
        assert await _answer(reader) == b"0"
        waited = await _closed_after(reader, BOUND_S + 2)
        assert BOUND_S - 0.2 <= waited <= BOUND_S + 1
        writer.close()

    _serve(test)


def test_a_busy_keep_alive_connection_outlives_many_bounds() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(8):  # 8 x 0.4 s: idle less than a bound each time, 3 bounds in all
            writer.write(REQUEST % b"0")
            assert await _answer(reader) == b"0"
            await asyncio.sleep(BOUND_S * 0.4)
        writer.write(REQUEST % b"0")
        assert await _answer(reader) == b"0"
        writer.close()

    _serve(test)


def test_an_answer_slower_than_both_bounds_is_not_cut() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST % b"2.5")
        assert await asyncio.wait_for(_answer(reader), 5) == b"2.5"
        writer.close()

    _serve(test)


def test_a_request_head_not_sent_in_time_closes_the_connection() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST % b"0")
        assert await _answer(reader) == b"0"
        writer.write(b"GET /0 HTTP/1.1\r\n")  # the next request, never finished
        waited = await _closed_after(reader, BOUND_S + 2)
        assert BOUND_S - 0.2 <= waited <= BOUND_S + 1
        writer.close()

    _serve(test)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST % b"0.3" + REQUEST % b"0" + REQUEST % b"0.1")
        answers = [await asyncio.wait_for(_answer(reader), 5) for _ in range(3)]
        assert answers == [b"0.3", b"0", b"0.1"]
        writer.close()

    _serve(test)


async def _head(reader: asyncio.StreamReader) -> list[bytes]:
    return (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")


def test_a_response_written_whole_is_framed_like_uvicorns() -> None:
    async def test(port: int) -> None:
        RESPONDED.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Pipelined: each answer is its own request's, in order, on a connection kept alive.
        writer.write(b"GET /whole HTTP/1.1\r\nHost: t\r\n\r\n" * 2)
        for _ in range(2):
            head = await _head(reader)
            assert head[0] == b"HTTP/1.1 200 OK"
            assert b"content-length: 5" in head and b"x-a: 1" in head
            assert any(line.startswith(b"date: ") for line in head)
            assert b"connection: close" not in head
            assert await reader.readexactly(5) == b"hello"
        writer.write(b"HEAD /whole HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"content-length: 5" in await _head(reader)  # and no body: the next answer
        writer.write(b"GET /framed HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await _head(reader)
        assert head[0] == b"HTTP/1.1 200 OK" and b"content-length: 5" in head
        assert await reader.readexactly(5) == b"hello"
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await _head(reader)
        assert b"transfer-encoding: chunked" in head and b"content-length: 5" not in head
        assert await reader.readuntil(b"0\r\n\r\n") == b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
        writer.write(b"GET /whole HTTP/1.0\r\n\r\n")  # no keep-alive: closed after
        assert b"connection: close" in await _head(reader)
        assert await reader.read() == b"hello"
        writer.close()
        assert RESPONDED == [("whole", True)] * 3 + [
            ("framed", False),
            ("stream", True),
            ("whole", True),
        ]

    _serve(test, _whole_app)


@pytest.mark.parametrize("kind", ["split", "spaced"])
def test_a_header_that_would_split_the_response_is_never_written(kind: str) -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n" % kind.encode())
        assert b"x-injected" not in await asyncio.wait_for(reader.read(), 10)
        writer.close()

    _serve(test, _whole_app)


def test_requests_leave_no_garbage_for_the_cyclic_collector() -> None:
    """Each request's objects go when it ends, by reference counting: a reference cycle per
    request (the scope holding its own cycle, say) costs the collector several percent of the
    gateway's CPU under load."""

    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def some(n: int) -> None:
            for _ in range(n):
                writer.write(b"GET /whole HTTP/1.1\r\nHost: t\r\n\r\n")
                await _head(reader)
                await reader.readexactly(5)
                writer.write(b"GET /framed HTTP/1.1\r\nHost: t\r\n\r\n")
                await _head(reader)
                await reader.readexactly(5)

        await some(20)  # warm: first-time caches and lazily made objects
        gc.collect()
        gc.disable()
        try:
            await some(200)
            assert gc.collect() == 0
        finally:
            gc.enable()
        writer.close()

    _serve(test, _whole_app)
