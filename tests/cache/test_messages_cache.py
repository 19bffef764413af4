"""Anthropic's Messages API through the response cache, on every store backend: a stored
message serves a JSON and a streaming request (its events reassemble into it), and a streamed
miss is stored whole."""

from __future__ import annotations

import pytest

from tests.anthropic.events import check_grammar, parse, reassemble
from tests.cache.conftest import Gateway
from tests.cache.test_cache import TOOLS, post
from tests.cache.upstream import ScriptedUpstream

pytestmark = pytest.mark.anyio

MESSAGE = {
    "model": "m",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "hello"}],
    "tools": [
        {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS
    ],
}


async def test_a_stored_message_is_served_as_json_and_as_its_events(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    async with gateway(cache_default_ttl_s=60) as app:
        first = await post(app, MESSAGE, "/v1/messages")
        again = await post(app, MESSAGE, "/v1/messages")
        streamed = await post(app, {**MESSAGE, "stream": True}, "/v1/messages")
    assert first.headers["x-best-cache"] == "miss"
    assert again.headers["x-best-cache"] == "hit"
    assert streamed.headers["x-best-cache"] == "hit"
    message = first.json()
    assert message["type"] == "message" and message["stop_reason"] == "tool_use"
    assert [block["type"] for block in message["content"]] == ["thinking", "text", "tool_use"]
    assert again.json() == message
    # A hit carries request-id like every answer on this route.
    assert "request-id" in again.headers
    events = parse(streamed.content)
    check_grammar(events)
    assert reassemble(events) == message
    assert upstream.calls["chat"] == 1


async def test_a_streamed_message_is_stored_whole_and_served_as_json(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    async with gateway(cache_default_ttl_s=60) as app:
        streamed = await post(app, {**MESSAGE, "stream": True}, "/v1/messages")
        as_json = await post(app, MESSAGE, "/v1/messages")
    assert streamed.headers["x-best-cache"] == "miss"
    assert as_json.headers["x-best-cache"] == "hit"
    told = reassemble(parse(streamed.content))
    assert as_json.json() == told
    assert told["content"][-1]["type"] == "tool_use" and told["content"][-1]["input"]
    assert upstream.calls["chat"] == 1
