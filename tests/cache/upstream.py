"""A scripted OpenAI-compatible upstream on loopback, in the test's own event loop: every
answer is new (it carries the call's number), so a test tells a cached answer from a fresh
one, and chat answers carry reasoning and, when the request has tools, a tool call, in JSON
and streamed alike.  It counts the calls it answers."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from typing import Any

from aiohttp import web

JSONObject = dict[str, Any]
TOOL_ARGUMENTS = '{"city": "Paris"}'


def _frame(event: JSONObject) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class ScriptedUpstream:
    """``modes`` queues how the next calls answer: "ok" (default), "filter" (finish_reason
    content_filter), "cut" (a stream aborted after three events; JSON: a 500), or an HTTP
    status such as 429.  ``delay_s`` holds every answer back, ``chunk_delay_s`` every streamed
    event after the first."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.modes: deque[str] = deque()
        self.delay_s = 0.0
        self.chunk_delay_s = 0.0
        self._number = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _begin(self, request: web.Request, api: str) -> tuple[JSONObject, str, int]:
        body = await request.json()
        self.calls[api] += 1
        self._number += 1
        mode = self.modes.popleft() if self.modes else "ok"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return body, mode, self._number

    @staticmethod
    def _error(mode: str) -> web.Response:
        status = int(mode) if mode.isdigit() else 500
        body = {"error": {"message": f"scripted {status}", "type": "server_error"}}
        headers = {"Retry-After": "1"} if status == 429 else {}
        return web.json_response(body, status=status, headers=headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, mode, n = await self._begin(request, "chat")
        if mode not in ("ok", "filter", "cut"):
            return self._error(mode)
        tools = bool(body.get("tools"))
        finish = "content_filter" if mode == "filter" else "tool_calls" if tools else "stop"
        text = f"answer number {n}"
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        head = {"id": f"chatcmpl-{n}", "created": 1700000000 + n, "model": body["model"]}
        if not body.get("stream"):
            if mode == "cut":
                return self._error("500")
            message: JSONObject = {
                "role": "assistant",
                "content": text,
                "reasoning_content": f"thinking {n}",
            }
            if tools:
                message["tool_calls"] = [
                    {
                        "id": f"call_{n}",
                        "type": "function",
                        "function": {"name": "weather", "arguments": TOOL_ARGUMENTS},
                    }
                ]
            choice = {"index": 0, "message": message, "finish_reason": finish}
            answer = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            return web.json_response(answer)

        def chunk(delta: JSONObject, reason: str | None = None) -> JSONObject:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        events = [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "thinking "}),
            chunk({"reasoning_content": str(n)}),
            chunk({"content": "answer "}),
            chunk({"content": f"number {n}"}),
        ]
        if tools:
            first = {"index": 0, "id": f"call_{n}", "type": "function"}
            events.append(
                chunk({"tool_calls": [{**first, "function": {"name": "weather", "arguments": ""}}]})
            )
            for part in ('{"city": ', '"Paris"}'):
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                )
        events.append(chunk({}, finish))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            events.append(
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        return await self._stream(request, events, cut=mode == "cut")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, mode, n = await self._begin(request, "completions")
        if mode not in ("ok", "filter", "cut"):
            return self._error(mode)
        finish = "content_filter" if mode == "filter" else "stop"
        head = {
            "id": f"cmpl-{n}",
            "object": "text_completion",
            "created": 1,
            "model": body["model"],
        }
        usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        if not body.get("stream"):
            choice = {
                "index": 0,
                "text": f"text number {n}",
                "logprobs": None,
                "finish_reason": finish,
            }
            return web.json_response({**head, "choices": [choice], "usage": usage})
        events = [
            {**head, "choices": [{"index": 0, "text": "text ", "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "text": f"number {n}", "finish_reason": finish}]},
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**head, "choices": [], "usage": usage})
        return await self._stream(request, events, cut=mode == "cut")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, mode, n = await self._begin(request, "embeddings")
        if mode != "ok":
            return self._error(mode)
        data = [{"object": "embedding", "index": 0, "embedding": [float(n), 0.5]}]
        usage = {"prompt_tokens": 2, "total_tokens": 2}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def _stream(
        self, request: web.Request, events: list[JSONObject], cut: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, event in enumerate(events):
            if index and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            if cut and index == 3:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(_frame(event))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
