"""A Messages request: what is refused, how it becomes a chat-completions body, its estimate."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.anthropic.request import (
    CHARS_PER_TOKEN,
    IMAGE_TOKENS,
    estimate_input_tokens,
    to_chat,
    validate,
)
from service.errors import BadRequest

CLAUDE_CODE = json.loads((Path(__file__).parent / "claude_code_request.json").read_text())


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return base


def chat(**fields: Any) -> dict[str, Any]:
    request = body(**fields)
    validate(request)
    return to_chat(request)


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def tool_result(id: str, content: Any = None, **extra: Any) -> dict[str, Any]:
    result = {"type": "tool_result", "tool_use_id": id, **extra}
    if content is not None:
        result["content"] = content
    return result


PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}

# -- validate -------------------------------------------------------------------------------

INVALID: list[tuple[Any, str | None]] = [
    ([1, 2], None),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    (body(model=7), "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    (body(max_tokens=0), "max_tokens"),
    (body(max_tokens=-3), "max_tokens"),
    (body(max_tokens="64"), "max_tokens"),
    (body(max_tokens=True), "max_tokens"),
    (body(max_tokens=2.5), "max_tokens"),
    ({"model": "m", "max_tokens": 5}, "messages"),
    (body(messages=[]), "messages"),
    (body(messages="hi"), "messages"),
    (body(messages=["hi"]), "messages.0"),
    (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (body(messages=[{"role": "user"}]), "messages.0.content"),
    (body(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    (body(messages=[user("hi")]), "messages.0.content.0"),
    (body(messages=[user({"text": "no type"})]), "messages.0.content.0.type"),
    (body(messages=[user({"type": "txet", "text": "x"})]), "messages.0.content.0.type"),
    (body(messages=[user({"type": "text"})]), "messages.0.content.0.text"),
    (body(messages=[user({"type": "image", "source": {"type": "base64"}})]), None),
    (body(messages=[user({"type": "image", "source": {"type": "gif"}})]), None),
    (body(messages=[user(tool_use("t", "f", {}))]), "messages.0.content.0.type"),
    (body(messages=[user(), assistant(tool_result("t", "x"))]), "messages.1.content.0.type"),
    (body(messages=[assistant(tool_use("t", "f", "{}"))]), "messages.0.content.0.input"),
    (body(messages=[assistant({"type": "tool_use", "name": "f", "input": {}})]), None),
    (body(messages=[user(tool_result("t", 5))]), "messages.0.content.0.content"),
    (body(messages=[user(tool_result("t", [tool_use("a", "b", {})]))]), None),
    (body(messages=[user(tool_result("t", "x", is_error="yes"))]), None),
    (body(stream="yes"), "stream"),
    (body(system=5), "system"),
    (body(system=[{"type": "image", "source": PNG}]), "system.0"),
    (body(tools={"name": "f"}), "tools"),
    (body(tools=[{"name": "f"}]), "tools.0.input_schema"),
    (body(tools=[{"input_schema": {}}]), "tools.0.name"),
    (body(tool_choice={"type": "required"}), "tool_choice.type"),
    (body(tool_choice={"type": "tool"}), "tool_choice.name"),
    (body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (body(thinking={"type": "on", "budget_tokens": 100}), "thinking.type"),
    (body(metadata={"user_id": 5}), "metadata.user_id"),
    (body(stop_sequences="END"), "stop_sequences"),
    (body(stop_sequences=["END", 1]), "stop_sequences"),
    (body(temperature="hot"), "temperature"),
    (body(top_k=1.5), "top_k"),
    (body(max_tokens=2**53), "max_tokens"),
    (body(max_tokens=2**64 - 1), "max_tokens"),
    (body(top_k=-(2**53)), "top_k"),
    # A source type that is not a string (once a TypeError: a 500).
    (body(messages=[user({"type": "image", "source": {"type": {}}})]), None),
    (body(messages=[user({"type": "document", "source": {"type": ["text"]}})]), None),
    # A document of blocks holds text and images only (once a crash in the translation).
    (
        body(messages=[user({"type": "document", "source": {"type": "content", "content": [5]}})]),
        "messages.0.content.0.source.content.0",
    ),
    (
        body(
            messages=[
                user(
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [text("a"), {"type": "text"}]},
                    }
                )
            ]
        ),
        "messages.0.content.0.source.content.1.text",
    ),
    (
        body(
            messages=[
                user(
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [tool_use("t", "f", {})]},
                    }
                )
            ]
        ),
        "messages.0.content.0.source.content.0",
    ),
]


def test_integral_floats_in_integer_fields_are_taken_as_ints() -> None:
    request = body(
        max_tokens=1024.0, top_k=5.0, thinking={"type": "enabled", "budget_tokens": 201.0}
    )
    validate(request)
    assert request["max_tokens"] == 1024 and type(request["max_tokens"]) is int
    assert type(request["top_k"]) is int and type(request["thinking"]["budget_tokens"]) is int
    assert type(to_chat(request)["max_tokens"]) is int


def test_a_document_of_text_and_image_blocks_is_translated_to_its_text() -> None:
    document = {
        "type": "document",
        "source": {
            "type": "content",
            "content": [text("first"), {"type": "image", "source": PNG}, text("second")],
        },
    }
    translated = chat(messages=[user(document)])
    assert translated["messages"] == [{"role": "user", "content": "first\n\nsecond"}]


@pytest.mark.parametrize(("request_body", "param"), INVALID)
def test_invalid_requests_are_refused_naming_the_field(
    request_body: Any, param: str | None
) -> None:
    with pytest.raises(BadRequest) as raised:
        validate(request_body)
    if param is not None:
        assert raised.value.param == param
        assert raised.value.message.startswith(f"{param}: ")


@pytest.mark.parametrize(
    "request_body",
    [
        body(max_tokens=1),  # Claude Code's probe
        CLAUDE_CODE,
        body(messages=[user(text("a"), {"type": "image", "source": {"type": "url", "url": "u"}})]),
        body(
            messages=[
                user(text("search")),
                assistant(
                    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
                    {"type": "web_search_tool_result", "tool_use_id": "s", "content": []},
                    {"type": "redacted_thinking", "data": "abc"},
                    text("found"),
                ),
            ]
        ),
        body(system="be brief", stream=False, temperature=0, top_p=1, top_k=5, stop_sequences=[]),
        body(thinking={"type": "adaptive"}, output_config={"effort": "high"}),
        body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
    ],
)
def test_valid_requests_pass(request_body: Any) -> None:
    validate(request_body)


# -- to_chat --------------------------------------------------------------------------------


def test_the_recorded_claude_code_request_becomes_exactly_this_chat_body() -> None:
    request = copy.deepcopy(CLAUDE_CODE)
    validate(request)
    bash_schema = request["tools"][0]["input_schema"]
    read_schema = request["tools"][1]["input_schema"]
    assert to_chat(request) == {
        "model": "claude-sonnet-4-5",
        "messages": [
            {
                "role": "system",
                "content": "x-anthropic-billing-header: cc_version=2.1.197.4fa; "
                "cc_entrypoint=sdk-cli;\n\n"
                "You are a Claude agent, built on Anthropic's Claude Agent SDK.\n\n"
                "\nYou are an interactive agent that helps users with software engineering "
                "tasks. (system prompt shortened)",
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": block["text"]}
                    for block in CLAUDE_CODE["messages"][0]["content"]
                ],
            },
            {
                "role": "assistant",
                "content": "I'll list them and read the notes.",
                "tool_calls": [
                    {
                        "id": "toolu_01Ls",
                        "type": "function",
                        "function": {
                            "name": "Bash",
                            "arguments": '{"command":"ls *.txt","description":"List text files"}',
                        },
                    },
                    {
                        "id": "toolu_02Read",
                        "type": "function",
                        "function": {
                            "name": "Read",
                            "arguments": '{"file_path":"/home/dev/project/notes.txt"}',
                        },
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_02Read", "content": "1\thi\n2\t"},
            {"role": "tool", "tool_call_id": "toolu_01Ls", "content": "notes.txt"},
        ],
        "max_tokens": 32000,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "Bash",
                    "description": "Executes a given bash command and returns its output.",
                    "parameters": bash_schema,
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "Read",
                    "description": "Reads a file from the local filesystem. You can access "
                    "any file directly by using this tool.",
                    "parameters": read_schema,
                },
            },
        ],
        "reasoning_effort": "medium",  # budget_tokens 10000
        "user": CLAUDE_CODE["metadata"]["user_id"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request == CLAUDE_CODE  # the request itself is left as it was


def test_system_string_and_blocks_become_one_system_message() -> None:
    assert chat(system="be brief")["messages"][0] == {"role": "system", "content": "be brief"}
    blocks = [text("one"), text("two", cache_control={"type": "ephemeral", "ttl": "1h"})]
    assert chat(system=blocks)["messages"][0] == {"role": "system", "content": "one\n\ntwo"}
    assert chat(system="")["messages"] == [{"role": "user", "content": "hi"}]
    assert chat(system=[])["messages"] == [{"role": "user", "content": "hi"}]


def test_user_blocks_become_content_parts() -> None:
    url = {"type": "url", "url": "https://example.com/cat.png"}
    messages = [
        user(text("only one")),
        assistant(text("ok")),
        user(text("look"), text(""), {"type": "image", "source": PNG}),
        assistant(text("a cat")),
        user({"type": "image", "source": url}, text("and this")),
    ]
    assert chat(messages=messages)["messages"] == [
        {"role": "user", "content": "only one"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {"role": "assistant", "content": "a cat"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "text", "text": "and this"},
            ],
        },
    ]


def test_documents_become_file_or_text_parts() -> None:
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    plain = {"type": "text", "media_type": "text/plain", "data": "the notes"}
    messages = [
        user({"type": "document", "source": pdf, "title": "a.pdf"}, text("summarize")),
        assistant(text("ok")),
        user({"type": "document", "source": plain}),
    ]
    translated = chat(messages=messages)["messages"]
    assert translated[0]["content"][0] == {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
    }
    assert translated[2] == {"role": "user", "content": "the notes"}


def test_a_files_api_image_cannot_be_translated() -> None:
    image = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
    with pytest.raises(BadRequest, match="Files API"):
        chat(messages=[user(image)])


def test_tool_use_becomes_tool_calls_with_ids_kept() -> None:
    messages = [
        user(text("weather?")),
        assistant(tool_use("toolu_1", "weather", {"city": "Zürich", "days": [1, 2]})),
        user(tool_result("toolu_1", "sunny")),
    ]
    assert chat(messages=messages)["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "arguments": '{"city":"Zürich","days":[1,2]}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
    ]


def test_tool_results_come_right_after_the_assistant_before_the_user_text() -> None:
    messages = [
        user(text("go")),
        assistant(text("two calls"), tool_use("a", "f", {}), tool_use("b", "g", {"x": 1})),
        user(text("and then continue"), tool_result("a", "A"), tool_result("b", [text("B")])),
    ]
    roles = [
        (m["role"], m.get("tool_call_id"), m["content"])
        for m in chat(messages=messages)["messages"][2:]
    ]
    assert roles == [
        ("tool", "a", "A"),
        ("tool", "b", "B"),
        ("user", None, "and then continue"),
    ]


def test_tool_result_blocks_errors_and_images() -> None:
    screenshot = {"type": "image", "source": PNG}
    messages = [
        user(text("go")),
        assistant(tool_use("a", "shot", {}), tool_use("b", "run", {})),
        user(
            tool_result("a", [text("line 1"), text("line 2"), screenshot]),
            tool_result("b", "exit 1", is_error=True),
            tool_result("c"),  # no content at all
        ),
    ]
    assert chat(messages=messages)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "a", "content": "line 1\n\nline 2"},
        {"role": "tool", "tool_call_id": "b", "content": "Error: exit 1"},
        {"role": "tool", "tool_call_id": "c", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ],
        },
    ]


def test_thinking_blocks_in_history_are_dropped() -> None:
    messages = [
        user(text("q")),
        assistant(
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            text("answer"),
        ),
        user(text("thanks")),
    ]
    assert chat(messages=messages)["messages"][1] == {"role": "assistant", "content": "answer"}


def test_tools_become_functions_and_server_tools_are_dropped() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tools = [
        {
            "name": "search",
            "description": "Search",
            "input_schema": schema,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
            "strict": True,
        },
        {"type": "custom", "name": "noop", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "bash_20250124", "name": "bash"},
    ]
    assert chat(tools=tools)["tools"] == [
        {
            "type": "function",
            "function": {"name": "search", "description": "Search", "parameters": schema},
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]


TOOL = {"name": "f", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    translated = chat(tools=[TOOL], tool_choice=choice)
    assert translated["tool_choice"] == expected
    assert "parallel_tool_calls" not in translated


def test_disable_parallel_tool_use() -> None:
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    translated = chat(tools=[TOOL], tool_choice=choice)
    assert translated["tool_choice"] == "auto"
    assert translated["parallel_tool_calls"] is False


def test_tool_choice_without_translatable_tools_is_dropped() -> None:
    server = {"type": "web_search_20250305", "name": "web_search"}
    translated = chat(tools=[server], tool_choice={"type": "any"})
    assert "tools" not in translated and "tool_choice" not in translated
    named = chat(tools=[TOOL, server], tool_choice={"type": "tool", "name": "web_search"})
    assert "tool_choice" not in named


def test_sampling_fields_stop_sequences_and_user() -> None:
    translated = chat(
        max_tokens=1,
        temperature=0.2,
        top_p=0.9,
        stop_sequences=["END", "\n\nHuman:"],
        metadata={"user_id": "u-42"},
    )
    assert translated == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END", "\n\nHuman:"],
        "user": "u-42",
    }


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4000}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 10000}, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, "high"),
        ({"type": "enabled", "budget_tokens": 31999}, "high"),
        ({"type": "disabled"}, None),
        ({"type": "adaptive"}, None),
    ],
)
def test_thinking_becomes_reasoning_effort(thinking: dict[str, Any], effort: str | None) -> None:
    assert chat(thinking=thinking).get("reasoning_effort") == effort


def test_adaptive_thinking_takes_the_effort_of_output_config() -> None:
    translated = chat(thinking={"type": "adaptive"}, output_config={"effort": "max"})
    assert translated["reasoning_effort"] == "high"
    assert "output_config" not in translated


def test_stream_flag_and_usage_option() -> None:
    assert chat(stream=True)["stream_options"] == {"include_usage": True}
    assert chat(stream=True)["stream"] is True
    assert "stream_options" not in chat(stream=False) and chat(stream=False)["stream"] is False
    assert "stream" not in chat()


def test_anthropic_only_fields_are_never_forwarded() -> None:
    cached = {"type": "ephemeral", "ttl": "1h"}
    request = body(
        system=[text("sys", cache_control=cached)],
        messages=[
            user(
                text("a", cache_control=cached),
                {"type": "image", "source": PNG, "cache_control": cached},
            ),
            assistant(
                text("b", cache_control=cached),
                tool_use("t", "f", {"k": "v"}) | {"cache_control": cached},
            ),
            user(tool_result("t", [text("r", cache_control=cached)], cache_control=cached)),
        ],
        tools=[TOOL | {"cache_control": cached}],
        top_k=40,
        output_config={"effort": "low", "format": {"type": "json_schema"}},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        container="container_1",
        mcp_servers=[{"type": "url", "url": "https://mcp.example", "name": "x"}],
        service_tier="auto",
        betas=["context-1m-2025-08-07"],
        inference_geo="us",
        speed="fast",
        some_future_field={"x": 1},
        stream=True,
    )
    validate(request)
    translated = to_chat(request)
    assert set(translated) == {
        "model",
        "messages",
        "max_tokens",
        "tools",
        "stream",
        "stream_options",
    }
    assert b"cache_control" not in orjson.dumps(translated)
    assert b"ttl" not in orjson.dumps(translated)


# -- estimate -------------------------------------------------------------------------------


def test_estimate_counts_characters_per_token_and_images() -> None:
    tools = [TOOL]
    request = body(
        system="12345678",  # 8
        messages=[
            user(text("abcd"), {"type": "image", "source": PNG}),  # 4 + an image
            assistant(tool_use("t", "f", {"a": 1})),  # 1 + len('{"a":1}') = 1 + 7
            user(tool_result("t", "xyz")),  # 3
        ],
        tools=tools,
    )
    chars = 8 + 4 + 8 + 3 + len(orjson.dumps(tools))
    expected = -(-chars // CHARS_PER_TOKEN) + IMAGE_TOKENS
    assert estimate_input_tokens(request) == expected
    assert estimate_input_tokens(copy.deepcopy(request)) == expected


def test_estimate_of_the_claude_code_request_is_near_its_size() -> None:
    estimate = estimate_input_tokens(CLAUDE_CODE)
    size = len(json.dumps(CLAUDE_CODE, ensure_ascii=False))
    assert size // 8 < estimate < size // CHARS_PER_TOKEN
    assert estimate_input_tokens(CLAUDE_CODE) == estimate
