"""A chat-completions stream as Anthropic's events, and a whole message replayed as events."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.anthropic.answer import from_chat
from service.anthropic.stream import MessageStream, error_event, message_events
from tests.anthropic.events import check_grammar, parse, reassemble, reassemble_with_sdk

ESTIMATE = 123


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [choice], **extra}


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def tool_delta(
    index: int, id: str | None = None, name: str | None = None, arguments: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {}}
    if id is not None:
        call |= {"id": id, "type": "function"}
    if name is not None:
        call["function"]["name"] = name
    if arguments is not None:
        call["function"]["arguments"] = arguments
    return {"tool_calls": [call]}


def run(
    chunks: list[dict[str, Any]], model: str = "claude-sonnet-4-5"
) -> list[tuple[str, dict[str, Any]]]:
    stream = MessageStream(model, ESTIMATE)
    out = b"".join(stream.feed(c) for c in chunks) + stream.end()
    events = parse(out)
    check_grammar(events)
    return events


def test_a_text_stream_frame_by_frame() -> None:
    stream = MessageStream("claude-haiku-4-5", 42)
    first = stream.feed(chunk({"role": "assistant", "content": ""}))
    assert first == (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_chatcmpl-9",'
        b'"type":"message","role":"assistant","model":"claude-haiku-4-5","content":[],'
        b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0,'
        b'"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}}\n\n'
    )
    assert stream.feed(chunk({"content": "Hi"})) == (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    )
    assert stream.feed(chunk({"content": ' "there"'})) == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":" \\"there\\""}}\n\n'
    )
    assert stream.feed(chunk({}, "stop")) == b""
    assert stream.feed(usage_chunk(30, 2, cached=16)) == b""
    assert stream.usage == {
        "input_tokens": 14,
        "output_tokens": 2,
        "cache_read_input_tokens": 16,
        "cache_creation_input_tokens": 0,
    }
    assert stream.end() == (
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"input_tokens":14,"output_tokens":2,'
        b'"cache_read_input_tokens":16,"cache_creation_input_tokens":0}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert stream.end() == b""


def test_tool_arguments_split_mid_token_arrive_whole() -> None:
    arguments = '{"command": "ls -la /tmp", "description": "Zürich \\"files\\""}'
    cuts = [0, 1, 5, 11, 12, 30, 44, 47, len(arguments)]
    pieces = [arguments[a:b] for a, b in pairwise(cuts)]
    chunks = [
        chunk({"role": "assistant"}),
        chunk({"content": "Let me look."}),
        chunk(tool_delta(0, id="call_abc", name="Bash", arguments="")),  # id and name first
        *(chunk(tool_delta(0, arguments=p)) for p in pieces),
        chunk({}, "tool_calls"),
        usage_chunk(100, 20),
    ]
    events = run(chunks)
    json_deltas = [
        d["delta"]["partial_json"]
        for n, d in events
        if d.get("delta", {}).get("type") == "input_json_delta"
    ]
    assert json_deltas == pieces  # as received, none empty
    message = reassemble(events)
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_abc", "name": "Bash", "input": orjson.loads(arguments)},
    ]
    assert message["stop_reason"] == "tool_use"
    assert reassemble_with_sdk(events)["content"] == message["content"]


def test_several_tool_calls_get_a_block_each() -> None:
    chunks = [
        chunk(tool_delta(0, id="a", name="f", arguments='{"x"')),
        chunk(tool_delta(0, arguments=": 1}")),
        chunk(tool_delta(1, id="b", name="g", arguments="")),
        chunk(tool_delta(1, arguments='{"y": 2}')),
        chunk(
            {"tool_calls": [{"index": 2, "id": "c", "function": {"name": "h", "arguments": "{}"}}]},
            "tool_calls",
        ),
    ]
    message = reassemble(run(chunks))
    assert message["content"] == [
        {"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "b", "name": "g", "input": {"y": 2}},
        {"type": "tool_use", "id": "c", "name": "h", "input": {}},
    ]


def test_tool_calls_without_an_index_are_told_apart_by_id() -> None:
    chunks = [
        chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"q": 1}'}}]}),
        chunk(
            {"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": '{"q": 2}'}}]},
            "stop",
        ),
    ]
    message = reassemble(run(chunks))
    assert [(b["id"], b["input"]) for b in message["content"]] == [("a", {"q": 1}), ("b", {"q": 2})]
    assert message["stop_reason"] == "tool_use"  # tools were called, whatever the upstream said


def test_reasoning_goes_to_a_thinking_block_before_the_text() -> None:
    chunks = [
        chunk({"role": "assistant", "content": "", "reasoning_content": "Two"}),
        chunk({"reasoning_content": " and two."}),
        chunk({"reasoning": "", "content": "Four."}),
        chunk({}, "stop"),
    ]
    events = run(chunks)
    assert [n for n, _ in events].count("message_start") == 1
    assert reassemble(events)["content"] == [
        {"type": "thinking", "thinking": "Two and two.", "signature": ""},
        {"type": "text", "text": "Four."},
    ]
    assert reassemble_with_sdk(events)["content"] == reassemble(events)["content"]


def test_message_delta_carries_the_upstreams_real_usage() -> None:
    events = run([chunk({"content": "x"}), chunk({}, "stop"), usage_chunk(5000, 7, cached=4096)])
    start_usage = events[0][1]["message"]["usage"]
    assert start_usage["input_tokens"] == ESTIMATE
    name, delta = events[-2]
    assert name == "message_delta"
    assert delta["usage"] == {
        "input_tokens": 904,
        "output_tokens": 7,
        "cache_read_input_tokens": 4096,
        "cache_creation_input_tokens": 0,
    }
    sdk = reassemble_with_sdk(events)
    assert sdk["usage"] == delta["usage"]


def test_without_reported_usage_the_estimate_stands() -> None:
    events = run([chunk({"content": "x"}, "stop")])
    assert events[-2][1]["usage"]["input_tokens"] == ESTIMATE


def test_no_block_for_empty_pieces() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": None, "reasoning_content": None}),
        chunk({"tool_calls": []}),
        chunk({}),
        chunk({}, "length"),
    ]
    events = run(chunks)
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["delta"]["stop_reason"] == "max_tokens"


def test_an_upstream_that_sends_nothing_still_gets_a_complete_message() -> None:
    stream = MessageStream("m", 9)
    events = parse(stream.end())
    check_grammar(events)
    assert events[1][1]["delta"]["stop_reason"] is None


def test_a_stop_sequence_the_upstream_names() -> None:
    last = chunk({}, "stop")
    last["choices"][0]["stop_reason"] = "3"  # vLLM names the stop string that matched
    events = run([chunk({"content": "1 2"}), last])
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "3"}


def test_malformed_chunks_are_skipped() -> None:
    chunks: list[Any] = [
        {"choices": "nope"},
        {"choices": [5]},
        {"choices": [{"delta": "text"}]},
        {"choices": [{"delta": {"tool_calls": "x"}}]},
        {"choices": [{"delta": {"tool_calls": [7, {"index": 0, "function": "f"}]}}]},
        chunk({"content": "ok"}, "stop"),
    ]
    message = reassemble(run(chunks))
    assert message["content"][-1] == {"type": "text", "text": "ok"}


def test_error_event() -> None:
    assert error_event("overloaded_error", "Overloaded") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )


# -- the property: a stream reassembles into the answer the same completion gets as JSON ------

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
FINISH = st.sampled_from(["stop", "length", "tool_calls", "content_filter", None])
# Integers within 64 bits: beyond them JSON numbers are not interoperable (RFC 8259, section
# 6), and JSON parsers differ (the SDK's reads them as floats).
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def arguments(draw: st.DrawFn) -> str:
    value = draw(st.dictionaries(TEXT, JSON_VALUE, max_size=4))
    if not value and draw(st.booleans()):
        return ""
    indent = draw(st.sampled_from([None, 1]))
    return json.dumps(value, indent=indent, ensure_ascii=draw(st.booleans()))


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut at random points (mid-token, mid-escape), no piece empty."""
    if not text:
        return []
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(text) - 1, 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < len(text)]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@st.composite
def upstream(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chat chunks and the completion that answers the same as JSON."""
    reasoning = draw(TEXT)
    text = draw(TEXT)
    calls = [
        (f"call_{i}", draw(st.sampled_from(["Bash", "Read", "f"])), draw(arguments()))
        for i in range(draw(st.integers(0, 3)))
    ]
    finish = draw(FINISH)
    stop_sequence = draw(st.sampled_from([None, "END"])) if finish == "stop" else None
    usage = None
    if draw(st.booleans()):
        prompt = draw(st.integers(0, 10_000))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": draw(st.integers(0, 5000)),
            "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, prompt))},
        }

    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"reasoning_content": p} for p in draw(split(reasoning))]
    deltas += [{"content": p} for p in draw(split(text))]
    for index, (call_id, name, args) in enumerate(calls):
        pieces = draw(split(args))
        if draw(st.booleans()) or not pieces:  # id and name in a chunk of their own
            deltas.append(tool_delta(index, id=call_id, name=name, arguments=""))
        else:
            deltas.append(tool_delta(index, id=call_id, name=name, arguments=pieces.pop(0)))
        deltas += [tool_delta(index, arguments=p) for p in pieces]
    chunks: list[dict[str, Any]] = []
    for delta in deltas:
        joinable = chunks and not (set(delta) & set(chunks[-1]["choices"][0]["delta"]))
        if joinable and draw(st.booleans()):
            chunks[-1]["choices"][0]["delta"].update(delta)
        else:
            chunks.append(chunk(dict(delta)))
        if draw(st.integers(0, 9)) == 0:
            chunks.append(chunk({}))  # a keep-alive of sorts
    last = chunks[-1]["choices"][0] if draw(st.booleans()) else None
    if last is None:
        chunks.append(chunk({}))
        last = chunks[-1]["choices"][0]
    last["finish_reason"] = finish
    if stop_sequence:
        last["stop_reason"] = stop_sequence
    if usage is not None:
        if draw(st.booleans()):
            chunks.append({"id": "chatcmpl-9", "choices": [], "usage": usage})
        else:
            chunks[-1]["usage"] = usage

    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in calls
        ]
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    if stop_sequence:
        choice["stop_reason"] = stop_sequence
    completion = {"id": "chatcmpl-9", "choices": [choice]}
    if usage is not None:
        completion["usage"] = usage
    return chunks, completion


Case = tuple[list[dict[str, Any]], dict[str, Any]]


def stream_reassembles_into_the_json_answer(case: Case) -> None:
    chunks, completion = case
    events = run(chunks, model="claude-opus-4-1")
    expected = from_chat(completion, "claude-opus-4-1")
    if "usage" not in completion:
        expected["usage"]["input_tokens"] = ESTIMATE  # the stream's estimate stands
    assert reassemble(events) == expected
    assert reassemble_with_sdk(events) == expected


def message_replays_as_events_that_reassemble_into_it(case: Case) -> None:
    message = from_chat(case[1], "claude-opus-4-1")
    events = parse(message_events(message))
    check_grammar(events)
    assert reassemble(events) == message
    assert reassemble_with_sdk(events) == message


# A quick pass for the inner loop, a thorough one marked slow.
QUICK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(upstream())
def test_a_stream_reassembles_into_the_json_answer(case: Case) -> None:
    stream_reassembles_into_the_json_answer(case)


@pytest.mark.slow
@THOROUGH
@given(upstream())
def test_a_stream_reassembles_into_the_json_answer_thoroughly(case: Case) -> None:
    stream_reassembles_into_the_json_answer(case)


@QUICK
@given(upstream())
def test_a_whole_message_replays_as_events_that_reassemble_into_it(case: Case) -> None:
    message_replays_as_events_that_reassemble_into_it(case)


@pytest.mark.slow
@THOROUGH
@given(upstream())
def test_a_whole_message_replays_as_events_that_reassemble_into_it_thoroughly(case: Case) -> None:
    message_replays_as_events_that_reassemble_into_it(case)


def test_a_replayed_message_keeps_raw_arguments_and_signatures() -> None:
    message = from_chat(
        {
            "id": "x",
            "choices": [
                {
                    "message": {
                        "reasoning_content": "hm",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
        },
        "m",
    )
    message["content"][0]["signature"] = "sig"
    events = parse(message_events(message))
    check_grammar(events)
    assert reassemble(events) == message


@st.composite
def any_order(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Reasoning, text and tool-call deltas in any order, as a careless upstream might."""
    deltas: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["reasoning_content", "content", "tool"]))
        if kind == "tool":
            index = draw(st.integers(0, 2))
            deltas.append(
                tool_delta(
                    index, id=draw(st.sampled_from([None, f"c{index}"])), arguments=draw(TEXT)
                )
            )
        else:
            deltas.append({kind: draw(TEXT)})
    return [chunk(d) for d in deltas] + [chunk({}, draw(FINISH))]


@QUICK
@given(any_order())
def test_any_order_of_deltas_keeps_the_grammar_and_the_text(chunks: list[dict[str, Any]]) -> None:
    message = reassemble_events_loosely(run(chunks))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    for kind, key in (("text", "content"), ("thinking", "reasoning_content")):
        streamed = "".join(b[kind] for b in message["content"] if b["type"] == kind)
        assert streamed == "".join(d.get(key) or "" for d in deltas)


def reassemble_events_loosely(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message without parsing tool input (arbitrary pieces are no JSON)."""
    content: list[dict[str, Any]] = []
    for name, data in events:
        if name == "content_block_start":
            content.append(dict(data["content_block"]))
        elif name == "content_block_delta" and data["delta"]["type"] in (
            "text_delta",
            "thinking_delta",
        ):
            key = data["delta"]["type"].removesuffix("_delta")
            content[data["index"]][key] += data["delta"][key]
    return {"content": content}
