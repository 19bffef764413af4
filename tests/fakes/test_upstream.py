"""The fake provider behaves like a real one, and breaks the way it is told to."""

from __future__ import annotations

import base64
import email.utils
import json
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import Behavior, FakeProvider, chat_usage, fake_embedding

MODELS = ["llama-3.3-70b", "text-embedding-3-small"]
CHAT = {"model": "llama-3.3-70b", "messages": [{"role": "user", "content": "hello there"}]}
STREAM = {**CHAT, "stream": True}


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(MODELS, api_key="sk-fake") as provider:
        yield provider


@pytest.fixture
def client(fake: FakeProvider) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer sk-fake"}
    with httpx.Client(base_url=fake.base_url, headers=headers, timeout=5.0) as http:
        yield http


def sse_events(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE response, JSON-decoded except ``[DONE]``."""
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def background_post(
    client: httpx.Client, body: dict[str, Any]
) -> tuple[threading.Thread, list[Any]]:
    """POST in a thread; the list receives the response or the exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(client.post("/chat/completions", json=body))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# --------------------------------------------------------------------------- healthy answers


def test_lists_models_in_openai_format(fake: FakeProvider, client: httpx.Client) -> None:
    assert fake.base_url == f"http://127.0.0.1:{fake.port}/v1"
    listing = client.get("/models").json()
    assert listing["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in listing["data"]] == [
        ("llama-3.3-70b", "model", "fake-provider"),
        ("text-embedding-3-small", "model", "fake-provider"),
    ]


def test_rejects_missing_or_wrong_key(fake: FakeProvider) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-other"}):
        response = httpx.post(f"{fake.base_url}/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{fake.base_url}/models").status_code == 401


def test_chat_completion(fake: FakeProvider, client: httpx.Client) -> None:
    response = client.post("/chat/completions", json=CHAT)
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "llama-3.3-70b"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert answer["usage"] == chat_usage(CHAT)


def test_records_requests(fake: FakeProvider, client: httpx.Client) -> None:
    client.post("/chat/completions", json=CHAT)
    (recorded,) = fake.requests
    assert (recorded.method, recorded.path, recorded.model) == (
        "POST",
        "/v1/chat/completions",
        "llama-3.3-70b",
    )
    assert recorded.headers["authorization"] == "Bearer sk-fake"
    assert recorded.body == CHAT
    assert fake.chat_requests == 1
    fake.clear()
    assert fake.requests == [] and fake.chat_requests == 0


def test_unknown_model_and_bad_body(client: httpx.Client) -> None:
    missing = client.post("/chat/completions", json={**CHAT, "model": "gpt-9"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert client.post("/chat/completions", content=b"{nope").status_code == 400


def test_tools_answer_with_a_tool_call(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    answer = client.post("/chat/completions", json={**CHAT, "tools": tools}).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}


def test_stream_without_usage(client: httpx.Client) -> None:
    with client.stream("POST", "/chat/completions", json=STREAM) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == (
        "echo: hello there"
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(chunks) == 5  # role, three words, finish


def test_stream_with_usage(client: httpx.Client) -> None:
    body = {**STREAM, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/chat/completions", json=body) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == chat_usage(CHAT)
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


def test_stream_with_tools(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    with client.stream("POST", "/chat/completions", json={**STREAM, "tools": tools}) as response:
        events = sse_events(response)
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[1]["tool_calls"][0]["function"]["name"] == "lookup"
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_embeddings_float_and_base64(fake: FakeProvider, client: httpx.Client) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a b", "c"]}
    answer = client.post("/embeddings", json=body).json()
    assert answer["object"] == "list"
    assert [d["embedding"] for d in answer["data"]] == [fake_embedding("a b"), fake_embedding("c")]
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    encoded = client.post("/embeddings", json={**body, "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(fake_embedding("a b"), abs=1e-6)
    assert fake.embedding_requests == 2


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("behavior", "status", "code"),
    [
        (Behavior.server_error(), 500, None),
        (Behavior.server_error(502), 502, None),
        (Behavior.server_error(503), 503, None),
        (Behavior.unauthorized(), 401, "invalid_api_key"),
        (Behavior.forbidden(), 403, "permission_denied"),
        (Behavior.model_not_found(), 404, "model_not_found"),
        (Behavior.context_length_exceeded(), 400, "context_length_exceeded"),
        (Behavior.bad_request(), 400, "invalid_value"),
    ],
)
def test_error_statuses(
    fake: FakeProvider, client: httpx.Client, behavior: Behavior, status: int, code: str | None
) -> None:
    fake.set_behavior(behavior)
    response = client.post("/chat/completions", json=CHAT)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert "retry-after" not in response.headers


def test_model_not_found_names_the_model(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.model_not_found())
    message = client.post("/chat/completions", json=CHAT).json()["error"]["message"]
    assert "`llama-3.3-70b`" in message


def test_rate_limited_retry_after_forms(fake: FakeProvider, client: httpx.Client) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    fake.queue(
        Behavior.rate_limited(7),
        Behavior.rate_limited(1.5),
        Behavior.rate_limited(when),
        Behavior.rate_limited(),
    )
    answers = [client.post("/chat/completions", json=CHAT) for _ in range(4)]
    assert [a.status_code for a in answers] == [429] * 4
    assert all(a.json()["error"]["code"] == "rate_limit_exceeded" for a in answers)
    assert answers[0].headers["retry-after"] == "7"
    assert answers[1].headers["retry-after"] == "1.5"
    assert email.utils.parsedate_to_datetime(answers[2].headers["retry-after"]) == when
    assert "retry-after" not in answers[3].headers


def test_garbage_empty_no_choices_inband(fake: FakeProvider, client: httpx.Client) -> None:
    fake.queue(Behavior.garbage(), Behavior.empty(), Behavior.no_choices(), Behavior.inband_error())
    garbage, empty, hollow, inband = (client.post("/chat/completions", json=CHAT) for _ in range(4))
    assert garbage.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        garbage.json()
    assert (empty.status_code, empty.content) == (200, b"")
    assert hollow.json()["choices"] == []
    assert inband.status_code == 200
    assert set(inband.json()) == {"error"}


def test_stream_variants_of_hollow_answers(fake: FakeProvider, client: httpx.Client) -> None:
    fake.queue(Behavior.empty(), Behavior.no_choices(), Behavior.inband_error())
    results = []
    for _ in range(3):
        with client.stream("POST", "/chat/completions", json=STREAM) as response:
            assert response.headers["content-type"] == "text/event-stream"
            results.append(sse_events(response))
    empty, hollow, inband = results
    assert empty == []
    assert hollow[0]["choices"] == [] and hollow[-1] == "[DONE]"
    assert set(inband[0]) == {"error"} and "[DONE]" not in inband


def test_stream_dies_mid_way(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.stream_dies(after_chunks=2))
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/chat/completions", json=STREAM) as response,
    ):
        assert response.status_code == 200
        received.extend(line for line in response.iter_lines() if line.startswith("data: "))
    assert len(received) == 2
    assert "[DONE]" not in "".join(received)
    assert fake.disconnects == 0  # the server hung up, not the client


def test_non_stream_request_truncated(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.stream_dies())
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/chat/completions", json=CHAT)


def test_plain_json_for_stream_request(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.json_for_stream())
    response = client.post("/chat/completions", json=STREAM)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["object"] == "chat.completion"


def test_slow_stream_spaces_chunks(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.slow_stream(0.03))
    arrivals: list[float] = []
    with client.stream("POST", "/chat/completions", json=STREAM) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6  # five chunks and [DONE]
    assert arrivals[-1] - arrivals[0] >= 5 * 0.03 * 0.9


def test_delayed_ok_times_out_client(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.ok(delay_s=2.0))
    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json=CHAT, timeout=0.1)
    fake.wait_for_disconnects(1)
    fake.wait_for_in_flight(0)


# --------------------------------------------------------------------------- selection


def test_behavior_per_model_and_queue_order(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.server_error(503), model="llama-3.3-70b")
    fake.queue(Behavior.rate_limited(1))
    fake.queue(Behavior.forbidden(), model="llama-3.3-70b")

    def status() -> int:
        return client.post("/chat/completions", json=CHAT).status_code

    assert [status(), status(), status()] == [403, 429, 503]
    embed = {"model": "text-embedding-3-small", "input": "x"}
    assert client.post("/embeddings", json=embed).status_code == 200
    fake.clear_behaviors()
    assert status() == 200


def test_models_behavior(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_models_behavior(Behavior.server_error(503))
    assert client.get("/models").status_code == 503
    fake.set_models_behavior(Behavior.ok())
    fake.set_models(["new-model"])
    assert [m["id"] for m in client.get("/models").json()["data"]] == ["new-model"]


# --------------------------------------------------------------------------- connections


def test_hang_then_client_gives_up(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.hang())
    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json=CHAT, timeout=0.2)
    fake.wait_for_disconnects(1)
    assert fake.in_flight == 0


def test_stop_does_not_wait_for_hanging_requests() -> None:
    fake = FakeProvider(MODELS).start()
    fake.set_behavior(Behavior.hang())
    with httpx.Client(base_url=fake.base_url, timeout=10.0) as http:
        thread, outcome = background_post(http, CHAT)
        fake.wait_for_in_flight(1)
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 2.0
        thread.join(timeout=5)
    assert isinstance(outcome[0], httpx.TransportError)
    assert fake.disconnects == 0


def test_client_leaving_a_stream_is_a_disconnect(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.slow_stream(0.05))
    with client.stream("POST", "/chat/completions", json=STREAM) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    fake.wait_for_disconnects(1)
    fake.wait_for_in_flight(0)


def test_in_flight_counts_held_requests(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_behavior(Behavior.held())
    calls = [background_post(client, CHAT) for _ in range(3)]
    fake.wait_for_in_flight(3)
    assert fake.max_in_flight == 3
    fake.release()
    for thread, _ in calls:
        thread.join(timeout=5)
    assert [outcome[0].status_code for _, outcome in calls] == [200, 200, 200]
    assert fake.in_flight == 0 and fake.max_in_flight == 3 and fake.chat_requests == 3


def test_restart_keeps_the_port() -> None:
    fake = FakeProvider(MODELS).start()
    port = fake.port
    fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")
    with fake.start():
        assert fake.port == port
        assert httpx.get(f"{fake.base_url}/models").status_code == 200


def test_wait_until_times_out(fake: FakeProvider) -> None:
    with pytest.raises(TimeoutError):
        fake.wait_until(lambda: fake.chat_requests > 0, timeout=0.05)
