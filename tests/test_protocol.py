"""The server's HTTP/1.1 protocol (``service/protocol.py``) on a real uvicorn server: its one
timer per connection bounds a request's reading and a keep-alive connection's idleness, and
never an answer in progress; pipelined requests are answered in order."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn

from service.protocol import GatewayProtocol, ServerConfig

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


def _serve(test: Callable[[int], Awaitable[None]]) -> None:
    """Runs ``test(port)`` beside a server of ``GatewayProtocol`` with ``BOUND_S`` bounds."""

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = ServerConfig(
            _app,
            http=GatewayProtocol,
            lifespan="off",
            log_config=None,
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
