"""A chat completion as a Messages answer."""

from __future__ import annotations

from typing import Any

import pytest

from service.anthropic.answer import RAW_ARGUMENTS, from_chat, stop_reason


def completion(
    message: dict[str, Any], finish: str | None = "stop", **extra: Any
) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    return {
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "model": "llama-3.1-8b-instant",
        "choices": [choice | extra],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


def call(id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_a_text_answer() -> None:
    assert from_chat(completion({"content": "Hello!"}), "claude-haiku-4-5") == {
        "id": "msg_chatcmpl-7",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 5,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_reasoning_becomes_a_thinking_block_first(key: str) -> None:
    answer = from_chat(completion({"content": "4", key: "2+2 is 4"}), "m")
    assert answer["content"] == [
        {"type": "thinking", "thinking": "2+2 is 4", "signature": ""},
        {"type": "text", "text": "4"},
    ]


def test_no_text_block_for_empty_content() -> None:
    for content in ("", None):
        calls = [call("call_1", "f", '{"a":1}')]
        answer = from_chat(completion({"content": content, "tool_calls": calls}, "tool_calls"), "m")
        assert [b["type"] for b in answer["content"]] == ["tool_use"]
    assert from_chat(completion({"content": ""}), "m")["content"] == []


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    calls = [
        call("call_1", "weather", '{"city": "Zürich", "days": [1, 2]}'),
        call("call_2", "noop", ""),
    ]
    answer = from_chat(completion({"content": "Checking.", "tool_calls": calls}, "tool_calls"), "m")
    assert answer["content"] == [
        {"type": "text", "text": "Checking."},
        {
            "type": "tool_use",
            "id": "call_1",
            "name": "weather",
            "input": {"city": "Zürich", "days": [1, 2]},
        },
        {"type": "tool_use", "id": "call_2", "name": "noop", "input": {}},
    ]
    assert answer["stop_reason"] == "tool_use"


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", "null", "not json"])
def test_arguments_that_are_not_a_json_object_are_kept_raw(arguments: str) -> None:
    answer = from_chat(completion({"tool_calls": [call("c", "f", arguments)]}, "tool_calls"), "m")
    assert answer["content"][0]["input"] == {RAW_ARGUMENTS: arguments}


def test_a_tool_call_without_an_id_gets_one() -> None:
    calls = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    answer = from_chat(completion({"content": "x", "tool_calls": calls}, "tool_calls"), "m")
    assert answer["content"][1]["id"] == "toolu_1"


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        ("eos", "end_turn"),
        (None, None),
    ],
)
def test_stop_reasons(finish: str | None, reason: str | None) -> None:
    assert stop_reason(finish) == reason
    assert from_chat(completion({"content": "x"}, finish), "m")["stop_reason"] == reason


def test_a_turn_with_tool_calls_stops_with_tool_use_even_when_the_upstream_says_stop() -> None:
    answer = from_chat(completion({"tool_calls": [call("c", "f", "{}")]}, "stop"), "m")
    assert answer["stop_reason"] == "tool_use"


@pytest.mark.parametrize("key", ["stop_reason", "matched_stop"])  # vLLM, SGLang
def test_a_stop_sequence_the_upstream_names(key: str) -> None:
    answer = from_chat(completion({"content": "1 2 3"}, "stop", **{key: "END"}), "m")
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "END")
    # A stop token id is no stop sequence.
    answer = from_chat(completion({"content": "1 2 3"}, "stop", **{key: 128009}), "m")
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("end_turn", None)


def test_cached_prompt_tokens_are_reported_as_cache_reads() -> None:
    answer = completion({"content": "x"})
    answer["usage"] = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 1920},
    }
    assert from_chat(answer, "m")["usage"] == {
        "input_tokens": 86,
        "output_tokens": 300,
        "cache_read_input_tokens": 1920,
        "cache_creation_input_tokens": 0,
    }


def test_cache_writes_when_reported() -> None:
    answer = completion({"content": "x"})
    answer["usage"] = {
        "prompt_tokens": 2600,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 400},
    }
    assert from_chat(answer, "m")["usage"] == {
        "input_tokens": 200,
        "output_tokens": 1,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 400,
    }
    deepseek = completion({"content": "x"})
    deepseek["usage"] = {
        "prompt_tokens": 100,
        "completion_tokens": 2,
        "prompt_cache_hit_tokens": 64,
    }
    assert from_chat(deepseek, "m")["usage"]["cache_read_input_tokens"] == 64


def test_an_answer_without_usage_or_id() -> None:
    answer = completion({"content": "x"})
    del answer["usage"], answer["id"]
    message = from_chat(answer, "m")
    assert message["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert message["id"].startswith("msg_") and len(message["id"]) > 10


def test_a_malformed_completion_gives_an_empty_message_not_a_crash() -> None:
    for broken in (
        {"choices": [5]},
        {"choices": [{"message": "text"}]},
        {"choices": [{"message": {"tool_calls": [3, {"function": "f"}]}}]},
        {"choices": "none"},
        {},
    ):
        message = from_chat(broken, "m")
        assert message["type"] == "message"
        assert all(block["type"] == "tool_use" for block in message["content"])
