"""What a framework would cost the hot routes: the same chat-shaped request answered by the
gateway's plain-ASGI primitives and by FastAPI, called in process (no network, no upstream),
so the figure is the edge's own work per request.

    uv run python -m bench.edge [--requests N] [--repeats R]

Three handlers read the body, parse it and answer a fixed JSON document:

- ``plain``: ``service.api.http`` Request/parse_json/send_response, as the hot routes do;
- ``fastapi-raw``: FastAPI's cheapest form (``Request`` in, ``Response`` out, no validation);
- ``fastapi-model``: FastAPI's usual form, the body validated as ``ChatCompletionRequest``.

Each is timed R times over N requests; the best run counts (least disturbed by other load).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from fastapi.responses import Response as FastAPIResponse

from service.api.http import JSON_HEADERS, Request, Response, parse_json, send_response
from service.api.schemas import ChatCompletionRequest
from service.types import Message, Receive, Scope, Send

BODY = orjson.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello."}]}
)
ANSWER = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


async def plain(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    parse_json(await request.body(10 * 1024 * 1024))
    await send_response(send, Response(200, ANSWER, JSON_HEADERS), [(b"x-request-id", b"1")])


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/raw")
    async def raw(request: FastAPIRequest) -> FastAPIResponse:
        orjson.loads(await request.body())
        return FastAPIResponse(ANSWER, media_type="application/json")

    @app.post("/model")
    async def model(body: ChatCompletionRequest) -> FastAPIResponse:
        return FastAPIResponse(ANSWER, media_type="application/json")

    return app


def scope_for(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"authorization", b"Bearer bench"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 12345),
    }


async def run(app: ASGI, path: str, requests: int) -> float:
    """Seconds for ``requests`` calls of ``app``."""
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for _ in range(requests):
        await app(scope_for(path), receive, send)
    elapsed = time.perf_counter() - started
    assert set(statuses) == {200}, set(statuses)
    return elapsed


async def measure(requests: int, repeats: int) -> dict[str, float]:
    api = fastapi_app()
    targets: dict[str, tuple[Any, str]] = {
        "plain": (plain, "/v1/chat/completions"),
        "fastapi-raw": (api, "/raw"),
        "fastapi-model": (api, "/model"),
    }
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, (app, path) in targets.items():
            await run(app, path, requests // 10)  # warm-up
            seconds = await run(app, path, requests)
            best[name] = min(best.get(name, seconds), seconds)
    return {name: seconds / requests * 1e6 for name, seconds in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    micros = asyncio.run(measure(args.requests, args.repeats))
    base = micros["plain"]
    print(f"{args.requests} requests x {args.repeats} runs, best run; us per request in process")
    for name, value in micros.items():
        print(f"  {name:<14} {value:7.1f} us  ({value / base:.1f}x plain, +{value - base:.1f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
