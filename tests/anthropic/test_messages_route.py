"""POST /v1/messages through the gateway, driven by the real ``anthropic`` SDK in process:
JSON and streams, tool use, count_tokens, models, native pass-through, failover, and the
route's auth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from service.anthropic.request import to_chat
from service.app import App
from tests.anthropic.conftest import sdk, transport
from tests.anthropic.events import check_grammar, parse
from tests.fakes.upstream import Behavior, FakeProvider
from tests.inprocess import USER_TOKEN

pytestmark = pytest.mark.anyio

Providers = tuple[FakeProvider, FakeProvider, FakeProvider]
HELLO = [{"role": "user", "content": "hello there"}]
CLAUDE_CODE = json.loads((Path(__file__).parent / "claude_code_request.json").read_text())


async def test_create_answers_a_message_named_as_asked(app: App, providers: Providers) -> None:
    chat_p, _, _ = providers
    raw = await sdk(app).messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=HELLO
    )
    message = await raw.parse()
    assert message.model == "claude-sonnet-4-5"  # the alias claude-* -> m served it
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "echo: hello there"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 3)
    assert (raw.headers["x-best-provider"], raw.headers["x-best-model"]) == ("p", "m")
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    sent = chat_p.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer kp"
    assert sent.body == {"model": "m", "messages": HELLO, "max_tokens": 64}


async def test_stream_reassembles_with_the_upstream_usage(app: App, providers: Providers) -> None:
    async with sdk(app).messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=HELLO
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "echo: hello there"
    assert final.model == "claude-haiku-4-5"
    assert final.stop_reason == "end_turn"
    # The upstream's own counts (2 prompt words, 3 reply words), not the gateway's estimate.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)
    assert providers[0].requests[-1].body["model"] == "m2"
    assert providers[0].requests[-1].body["stream_options"] == {"include_usage": True}


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, **extra}


# A tool call whose arguments arrive in pieces cut inside a key, a string and an escape.
ARGUMENT_PIECES = ['{"comm', 'and": "ls -la /t', "mp/caf\\u00", 'e9"}']
TOOL_CALL_CHUNKS = [
    _chunk({"role": "assistant", "content": "Let me look."}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": ""},
                }
            ]
        }
    ),
    *[
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
        for p in ARGUMENT_PIECES
    ],
    _chunk({}, "tool_calls"),
    _chunk(None, usage={"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}),
]
BASH = {
    "name": "Bash",
    "description": "Run a shell command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
}


async def test_tool_use_round_trip_with_arguments_split_mid_token(
    app: App, providers: Providers
) -> None:
    chat_p = providers[0]
    chat_p.queue(Behavior.scripted(TOOL_CALL_CHUNKS))
    ask = [{"role": "user", "content": "list /tmp/café"}]
    async with sdk(app).messages.stream(
        model="m", max_tokens=256, messages=ask, tools=[BASH]
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    text, call = first.content
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("call_7", "Bash", {"command": "ls -la /tmp/café"})
    assert (first.usage.input_tokens, first.usage.output_tokens) == (40, 12)

    # The client runs the tool and answers with its result: the upstream gets the call and
    # the result under the same id.
    chat_p.queue(
        Behavior.scripted(
            answer={
                "id": "chatcmpl-2",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "It holds notes.txt."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 60, "completion_tokens": 5, "total_tokens": 65},
            }
        )
    )
    history = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_7", "content": "notes.txt"}],
        },
    ]
    final = await sdk(app).messages.create(
        model="m", max_tokens=256, messages=history, tools=[BASH]
    )
    assert final.content[0].text == "It holds notes.txt."  # type: ignore[union-attr]
    sent = chat_p.requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_7"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {
        "command": "ls -la /tmp/café"
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_7", "content": "notes.txt"}


async def test_the_raw_stream_is_exact(app: App, providers: Providers) -> None:
    """The bytes on the wire: one block at a time, no empty text block, the partial_json
    pieces concatenating to the arguments, message_delta with the real usage."""
    providers[0].queue(Behavior.scripted(TOOL_CALL_CHUNKS))
    body = {"model": "m", "max_tokens": 64, "stream": True, "messages": HELLO, "tools": [BASH]}
    async with transport(app) as http:
        response = await http.post("/v1/messages", json=body, headers={"x-api-key": USER_TOKEN})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = parse(response.content)
    check_grammar(events)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["text", "tool_use"]
    pieces = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert "".join(pieces) == "".join(ARGUMENT_PIECES)
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["usage"]["input_tokens"] == 40 and delta["usage"]["output_tokens"] == 12


async def test_claude_code_request_reaches_a_chat_provider_translated(
    app: App, providers: Providers
) -> None:
    """A request recorded from Claude Code (system blocks with cache_control, tools,
    thinking, metadata, context_management) arrives as a clean chat body."""
    chat_p = providers[0]
    async with transport(app) as http:
        response = await http.post(
            "/v1/messages?beta=true",
            content=orjson.dumps(CLAUDE_CODE),
            headers={
                "authorization": f"Bearer {USER_TOKEN}",
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
                "content-type": "application/json",
            },
        )
    assert response.status_code == 200, response.text
    check_grammar(parse(response.content))
    sent = chat_p.requests[-1]
    assert sent.body == {**to_chat(CLAUDE_CODE), "model": "m"}
    for anthropic_only in (b"cache_control", b"context_management", b"metadata", b"thinking"):
        assert anthropic_only not in sent.raw
    assert sent.body["messages"][0]["role"] == "system"
    assert [t["function"]["name"] for t in sent.body["tools"]] == [
        t["name"] for t in CLAUDE_CODE["tools"]
    ]
    assert sent.body["user"] == CLAUDE_CODE["metadata"]["user_id"]
    assert sent.body["stream_options"] == {"include_usage": True}
    assert "anthropic-beta" not in sent.headers and "x-api-key" not in sent.headers


async def test_count_tokens_estimates_and_never_404s(app: App, providers: Providers) -> None:
    client = sdk(app)
    counted = await client.messages.count_tokens(model="m", messages=HELLO)
    assert counted.input_tokens > 0
    unknown = await client.messages.count_tokens(model="no-such-model", messages=HELLO)
    assert unknown.input_tokens == counted.input_tokens
    assert providers[0].requests == []  # an estimate: no upstream was asked


async def test_count_tokens_asks_a_native_provider(app: App, providers: Providers) -> None:
    native = providers[2]
    counted = await sdk(app).messages.count_tokens(
        model="claude-native", system="be brief", messages=HELLO
    )
    assert counted.input_tokens == 4  # the fake counts words: "be brief" + "hello there"
    assert native.requests[-1].path == "/v1/messages/count_tokens"
    assert native.requests[-1].headers["x-api-key"] == "kn"


async def test_models_list_in_anthropic_shape(app: App, providers: Providers) -> None:
    client = sdk(app)
    ids = [model.id async for model in client.models.list()]
    assert ids == ["priority-auto", "claude-native", "m", "m2"]
    page = await client.models.list(limit=2)
    assert [m.id for m in page.data] == ["priority-auto", "claude-native"]
    assert page.has_more and page.last_id == "claude-native"
    model = await client.models.retrieve("claude-opus-4-1")  # an alias routes it
    assert model.id == "claude-opus-4-1" and model.type == "model"
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.models.retrieve("nothing-like-it")
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # Without anthropic-version the same path answers OpenAI's list.
    async with transport(app) as http:
        openai = await http.get("/v1/models", headers={"authorization": f"Bearer {USER_TOKEN}"})
    assert openai.json()["object"] == "list"


async def test_native_provider_gets_the_request_as_sent(app: App, providers: Providers) -> None:
    native = providers[2]
    body = {
        "model": "claude-native",
        "max_tokens": 32,
        "system": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
        "messages": HELLO,
        "top_k": 5,
        "metadata": {"user_id": "u1"},
    }
    async with transport(app) as http:
        response = await http.post(
            "/v1/messages",
            json=body,
            headers={
                "x-api-key": USER_TOKEN,
                "anthropic-version": "2024-01-01",
                "anthropic-beta": "prompt-caching-2024-07-31",
            },
        )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "claude-native" and answer["type"] == "message"
    assert answer["usage"]["cache_read_input_tokens"] == 3
    sent = native.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.body == body  # untouched: cache_control, top_k and metadata included
    assert sent.headers["x-api-key"] == "kn"
    assert "Authorization" not in sent.headers
    assert sent.headers["anthropic-version"] == "2024-01-01"
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert USER_TOKEN not in sent.raw.decode() + str(dict(sent.headers))


async def test_native_stream_is_relayed_with_its_usage(app: App, providers: Providers) -> None:
    async with sdk(app).messages.stream(
        model="claude-native", max_tokens=32, messages=HELLO
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "echo: hello there"
    assert final.usage.input_tokens == 2 and final.usage.output_tokens == 3
    assert final.usage.cache_read_input_tokens == 3
    # The SDK's own anthropic-version travels on; without one the provider gets 2023-06-01.
    sent_version = stream.response.request.headers["anthropic-version"]
    assert providers[2].requests[-1].headers["anthropic-version"] == sent_version
    async with transport(app) as http:
        body = {"model": "claude-native", "max_tokens": 8, "messages": HELLO}
        await http.post("/v1/messages", json=body, headers={"x-api-key": USER_TOKEN})
    assert providers[2].requests[-1].headers["anthropic-version"] == "2023-06-01"


async def test_a_native_refusal_is_relayed_as_is(app: App, providers: Providers) -> None:
    providers[2].queue(Behavior.bad_request("max_tokens: too large"))
    with pytest.raises(anthropic.BadRequestError) as refused:
        await sdk(app).messages.create(model="claude-native", max_tokens=32, messages=HELLO)
    assert refused.value.status_code == 400
    assert "max_tokens: too large" in refused.value.message


async def test_failover_before_the_first_event(app: App, providers: Providers) -> None:
    chat_p, chat_q, _ = providers
    chat_p.queue(Behavior.server_error(503))
    async with sdk(app).messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
        final = await stream.get_final_message()
        served = stream.response.headers["x-best-provider"]
    assert final.content[0].text == "echo: hello there"  # type: ignore[union-attr]
    assert served == "q"
    assert chat_p.chat_requests == 1 and chat_q.chat_requests == 1


async def test_a_mid_stream_death_ends_with_an_error_event(app: App, providers: Providers) -> None:
    providers[0].queue(Behavior.stream_dies(after_chunks=3))
    body = {"model": "m", "max_tokens": 64, "stream": True, "messages": HELLO}
    async with transport(app) as http:
        response = await http.post("/v1/messages", json=body, headers={"x-api-key": USER_TOKEN})
    assert response.status_code == 200
    events = parse(response.content)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and "content_block_delta" in names
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "api_error"
    # The SDK raises it, as it does for Anthropic's own mid-stream errors.
    providers[0].queue(Behavior.stream_dies(after_chunks=3))
    with pytest.raises(anthropic.APIStatusError):
        async with sdk(app).messages.stream(model="m", max_tokens=64, messages=HELLO) as stream:
            await stream.get_final_message()


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_a_bad_token_is_a_401_before_the_body(app: App, header: str) -> None:
    value = "sk-wrong" if header == "x-api-key" else "Bearer sk-wrong"
    async with transport(app) as http:
        response = await http.post("/v1/messages", content=b"{not json", headers={header: value})
        missing = await http.post("/v1/messages/count_tokens", content=b"{}")
    for refused in (response, missing):
        assert refused.status_code == 401
        assert refused.json() == {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": refused.json()["error"]["message"],
            },
        }
    # The SDK's auth_token (ANTHROPIC_AUTH_TOKEN) is a bearer; its api_key is x-api-key.
    with_bearer = sdk(app, api_key=None, auth_token=USER_TOKEN)
    assert (await with_bearer.messages.create(model="m", max_tokens=8, messages=HELLO)).content
