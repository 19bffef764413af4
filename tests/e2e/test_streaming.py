"""Streaming chat completions (SSE) end to end: relay, failover before the first chunk, the
terminal error event after it, cancellation, usage and JSON-for-stream (docs/routing.md,
"Streaming")."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Fleet, ProviderSpec, assert_openai_error, chat_body, start_fleet
from tests.fakes.upstream import Behavior, chat_usage

# Both providers serve every model; each test streams a model of its own, so a pair cooled
# by one test never changes the route of another.
MODELS = [
    "s-ok",
    "s-client",
    "s-fail-500",
    "s-fail-inband",
    "s-fail-dies",
    "s-fail-empty",
    "s-fail-garbage",
    "s-fail-ctx",
    "s-fail-nochoice",
    "s-mid",
    "s-slow",
    "s-cancel",
    "s-usage",
    "s-json",
    "s-all",
    "s-400",
]
STALL_TIMEOUT_S = 0.5


SPECS = [
    ProviderSpec("first", MODELS, priority=2),
    ProviderSpec("second", MODELS),
    ProviderSpec("stall", ["s-stall"], timeout_s=STALL_TIMEOUT_S),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("stream-config"), SPECS, inprocess=True)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def process_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The same fleet behind a gateway process: bytes arrive on a real socket as they are sent,
    and a client leaving closes it."""
    fleet = start_fleet(tmp_path_factory.mktemp("stream-process"), SPECS)
    yield fleet
    fleet.stop()


@pytest.fixture(autouse=True)
def _reset(fleet: Fleet) -> None:
    fleet.reset()


def stream_events(fleet: Fleet, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    """POST a streaming request; the response and its ``data:`` payloads (JSON or "[DONE]")."""
    events: list[Any] = []
    with fleet.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return response, events
        for line in response.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return response, events


def content_of(events: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    )


def test_chunks_are_relayed_in_order_and_end_with_done(fleet: Fleet) -> None:
    response, events = stream_events(fleet, chat_body("s-ok", text="one two three", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-best-provider"] == "first"
    assert response.headers["x-best-model"] == "s-ok"
    assert response.headers["x-request-id"]
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    words = [c for e in events[:-1] for c in (e["choices"][0]["delta"].get("content"),) if c]
    assert words == ["echo: ", "one ", "two ", "three"]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_openai_client_streams_the_whole_answer(fleet: Fleet) -> None:
    stream = fleet.client().chat.completions.create(
        model="s-client", messages=[{"role": "user", "content": "stream me"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: stream me"


@pytest.mark.parametrize(
    ("model", "behavior"),
    [
        ("s-fail-500", Behavior.server_error(500)),
        ("s-fail-inband", Behavior.inband_error()),
        ("s-fail-dies", Behavior.stream_dies(after_chunks=0)),
        ("s-fail-empty", Behavior.empty()),
        ("s-fail-garbage", Behavior.garbage()),
        ("s-fail-ctx", Behavior.context_length_exceeded()),
        ("s-fail-nochoice", Behavior.no_choices()),
    ],
    ids=[
        "500",
        "in-band-error",
        "dies-before-first-chunk",
        "empty-stream",
        "garbage",
        "context-length",
        "only-empty-choices",
    ],
)
def test_failover_before_the_first_chunk(fleet: Fleet, model: str, behavior: Behavior) -> None:
    fleet["first"].queue(behavior, model=model)
    response, events = stream_events(fleet, chat_body(model, stream=True))
    assert response.status_code == 200
    assert response.headers["x-best-provider"] == "second"
    assert content_of(events) == "echo: hello there"
    assert events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "error" in e for e in events)
    assert fleet["first"].chat_requests == fleet["second"].chat_requests == 1


def test_death_mid_stream_ends_with_an_error_event(fleet: Fleet) -> None:
    fleet["first"].queue(Behavior.stream_dies(after_chunks=3), model="s-mid")
    response, events = stream_events(fleet, chat_body("s-mid", text="a b c d e", stream=True))
    assert response.status_code == 200
    assert content_of(events) == "echo: a "  # role chunk + two words, then the upstream died
    last = events[-1]
    assert isinstance(last, dict) and set(last) == {"error"}, events
    assert last["error"]["message"]
    assert "[DONE]" not in events
    assert fleet["second"].chat_requests == 0  # no failover once the client has content

    fleet["first"].queue(Behavior.stream_dies(after_chunks=3), model="s-mid")
    stream = fleet.client().chat.completions.create(
        model="first/s-mid", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


@pytest.mark.slow  # timing of bytes on a real socket (a gateway process)
def test_slow_stream_is_relayed_as_it_comes(process_fleet: Fleet) -> None:
    fleet = process_fleet
    fleet.reset()
    delay = 0.1
    fleet["first"].set_behavior(Behavior.slow_stream(delay), model="s-slow")
    body = chat_body("s-slow", text="w1 w2 w3 w4", stream=True)
    arrivals: list[float] = []
    started = time.monotonic()
    with fleet.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        text = ""
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                arrivals.append(time.monotonic() - started)
                for choice in json.loads(line[5:])["choices"]:
                    text += choice["delta"].get("content") or ""
    assert text == "echo: w1 w2 w3 w4"
    # Not buffered: the first chunk arrives long before the last one.
    assert arrivals[-1] - arrivals[0] >= 4 * delay
    assert arrivals[0] < arrivals[-1] - 2 * delay


@pytest.mark.slow  # timing of bytes on a real socket (a gateway process)
def test_client_disconnect_cancels_the_upstream(process_fleet: Fleet) -> None:
    fleet = process_fleet
    fleet.reset()
    fake = fleet["first"]
    fake.set_behavior(Behavior.slow_stream(0.5), model="s-cancel")
    body = chat_body("s-cancel", text=" ".join(f"w{i}" for i in range(40)), stream=True)
    with fleet.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"]
        left_at = time.monotonic()
    # leaving the block closed the connection mid-stream
    fake.wait_for_disconnects(1, timeout=3)
    assert time.monotonic() - left_at < 2.5  # well before the ~20 s the stream would take
    fake.wait_until(lambda: fake.in_flight == 0, timeout=3)


@pytest.mark.slow  # timing of bytes on a real socket (a gateway process)
def test_client_that_leaves_before_the_first_byte_cancels_the_upstream(
    process_fleet: Fleet,
) -> None:
    fleet = process_fleet
    fleet.reset()
    fake = fleet["first"]
    fake.set_behavior(Behavior.hang(), model="s-cancel")  # headers and events never come
    body = chat_body("s-cancel", stream=True)
    with fleet.http() as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(20, read=0.5))
        left_at = time.monotonic()
    fake.wait_for_disconnects(1, timeout=3)
    assert time.monotonic() - left_at < 2.5  # the upstream would never have answered
    fake.wait_until(lambda: fake.in_flight == 0, timeout=3)


def test_usage_is_requested_upstream_but_not_forwarded_unasked(fleet: Fleet) -> None:
    body = chat_body("s-usage", text="count me", stream=True)
    response, events = stream_events(fleet, body)
    assert response.status_code == 200
    (request,) = fleet["first"].requests
    assert request.body["stream_options"] == {"include_usage": True}
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(e.get("usage") is None for e in chunks), chunks
    assert all(e["choices"] for e in chunks)  # no usage-only chunk
    assert content_of(events) == "echo: count me"
    assert events[-1] == "[DONE]"


def test_usage_on_a_chunk_with_choices_is_stripped_unasked(fleet: Fleet) -> None:
    fleet["first"].set_behavior(Behavior.usage_on_choices())
    body = chat_body("s-usage", text="count me", stream=True)
    response, events = stream_events(fleet, body)
    assert response.status_code == 200
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(e.get("usage") is None for e in chunks), chunks
    # The chunk that carried the usage still brings its choice and finish_reason.
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert content_of(events) == "echo: count me"
    assert events[-1] == "[DONE]"


def test_usage_on_a_chunk_with_choices_is_kept_when_asked(fleet: Fleet) -> None:
    fleet["first"].set_behavior(Behavior.usage_on_choices())
    body = chat_body("s-usage", text="count me", stream=True)
    body["stream_options"] = {"include_usage": True}
    response, events = stream_events(fleet, body)
    assert response.status_code == 200
    assert events[-2]["usage"] == chat_usage(body)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_usage_chunk_is_forwarded_when_the_client_asks(fleet: Fleet) -> None:
    body = chat_body("s-usage", text="count me", stream=True)
    body["stream_options"] = {"include_usage": True}
    response, events = stream_events(fleet, body)
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == chat_usage(body)

    stream = fleet.client().chat.completions.create(
        model="s-usage",
        messages=[{"role": "user", "content": "count me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chat_usage(body)["total_tokens"]


def test_json_answer_to_a_streaming_request_is_relayed_as_sse(fleet: Fleet) -> None:
    fleet["first"].set_behavior(Behavior.json_for_stream(), model="s-json")
    response, events = stream_events(fleet, chat_body("s-json", text="plain json", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert content_of(events) == "echo: plain json"
    assert events[-1] == "[DONE]"
    assert events[0]["object"] == "chat.completion.chunk"

    stream = fleet.client().chat.completions.create(
        model="s-json", messages=[{"role": "user", "content": "via sdk"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "echo: via sdk"
    )


def test_stream_where_every_provider_fails_gets_an_error_status(fleet: Fleet) -> None:
    for name in ("first", "second"):
        fleet[name].set_behavior(Behavior.server_error(500), model="s-all")
    response, events = stream_events(fleet, chat_body("s-all", stream=True))
    assert events == []
    assert_openai_error(response, 502)


def test_client_fault_on_a_stream_is_relayed_untouched(fleet: Fleet) -> None:
    fleet["first"].queue(Behavior.bad_request("Invalid value for 'temperature'."), model="s-400")
    response, events = stream_events(fleet, chat_body("s-400", stream=True))
    assert events == []
    error = assert_openai_error(response, 400, "invalid_value")
    assert error["message"] == "Invalid value for 'temperature'."
    assert error["param"] == "temperature"
    assert fleet["second"].chat_requests == 0


@pytest.mark.slow  # waits out an idle timeout
def test_upstream_that_stalls_mid_stream_ends_with_an_error_event(fleet: Fleet) -> None:
    """A provider's timeout_s bounds each wait for the next chunk, not the whole stream."""
    fake = fleet["stall"]
    fake.set_behavior(Behavior.slow_stream(STALL_TIMEOUT_S / 5))
    response, events = stream_events(fleet, chat_body("s-stall", text="a b c d e f", stream=True))
    assert content_of(events) == "echo: a b c d e f"  # longer than timeout_s in total
    assert events[-1] == "[DONE]"

    fake.set_behavior(Behavior.slow_stream(STALL_TIMEOUT_S * 4))
    started = time.monotonic()
    response, events = stream_events(fleet, chat_body("s-stall", text="a b c", stream=True))
    assert response.status_code == 200
    assert time.monotonic() - started < STALL_TIMEOUT_S * 4
    last = events[-1]
    assert isinstance(last, dict) and set(last) == {"error"}, events
    fake.wait_for_disconnects(1, timeout=3)  # the stalled upstream was let go
