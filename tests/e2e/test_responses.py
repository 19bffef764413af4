"""The rest of the OpenAI surface through one gateway, driven by the real openai SDK: the
Responses API (JSON, typed SSE events, failover, the closing error event), legacy
completions, ``models.retrieve`` with a slash in the id, and bad inputs.

Three fake providers serve the same models: ``chatonly`` ranks first but its config keeps the
default ``apis`` (chat, embeddings), so it must never see a Responses or completions request
although its fake would answer one; ``alpha`` and ``beta`` declare every API.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Fleet, ProviderSpec, assert_openai_error, start_fleet
from tests.fakes.upstream import Behavior

ALL = ["chat", "embeddings", "responses", "completions"]
# Each failover test uses a model of its own: a failure cools its pair for a while.
MODELS = [
    "gpt-r",
    "fo-json",
    "fo-stream",
    "fo-event",
    "mid-die",
    "mid-error",
    "fo-cmpl",
    "conv",
    "gone",
    "bye",
]


SPECS = [
    ProviderSpec("chatonly", [*MODELS, "meta/llama-only"], priority=10),
    ProviderSpec("alpha", [*MODELS, "org/model-a"], priority=3, apis=ALL),
    ProviderSpec("beta", MODELS, priority=2, apis=ALL),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    started = start_fleet(tmp_path_factory.mktemp("responses"), SPECS, inprocess=True)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def process_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The same fleet behind a gateway process: a client leaving closes a real socket."""
    started = start_fleet(tmp_path_factory.mktemp("responses-process"), SPECS)
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def _reset(fleet: Fleet) -> None:
    fleet.reset()


def _raw_events(body: str) -> list[tuple[str, str]]:
    """(event name, data) of each SSE event of a raw body."""
    found = []
    for block in body.split("\n\n"):
        name = re.search(r"^event: (.*)$", block, re.M)
        data = re.search(r"^data: (.*)$", block, re.M)
        if data:
            found.append((name.group(1) if name else "", data.group(1)))
    return found


# -- the Responses API -------------------------------------------------------------------------


def test_json_response_is_served_by_a_capable_provider(fleet: Fleet) -> None:
    client = fleet.client()
    raw = client.responses.with_raw_response.create(model="gpt-r", input="hello there")
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "echo: hello there"
    assert response.usage is not None and response.usage.input_tokens == 2
    assert response.usage.output_tokens == 3
    assert raw.headers["x-best-provider"] == "alpha"
    assert fleet["alpha"].response_requests == 1
    assert fleet["chatonly"].response_requests == 0
    assert response.id in fleet["alpha"].stored_responses


def test_streaming_response_relays_typed_events_and_ends_completed(fleet: Fleet) -> None:
    client = fleet.client()
    events = list(client.responses.create(model="gpt-r", input="stream me please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "echo: stream me please"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.usage is not None and final.usage.output_tokens == 4
    assert fleet["chatonly"].response_requests == 0

    # On the wire: each event keeps its name, and there is no [DONE].
    with fleet.http() as http:
        body = {"model": "gpt-r", "input": "raw", "stream": True}
        answer = http.post("/v1/responses", json=body)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    wire = _raw_events(answer.text)
    assert wire[0][0] == "response.created" and wire[-1][0] == "response.completed"
    assert all(name for name, _ in wire)
    assert "[DONE]" not in answer.text


def test_priority_auto_and_a_chat_only_model_respect_apis(fleet: Fleet) -> None:
    client = fleet.client()
    auto = client.responses.with_raw_response.create(model="priority-auto", input="hi")
    assert auto.headers["x-best-provider"] in ("alpha", "beta")
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="meta/llama-only", input="hi")
    assert caught.value.code == "model_not_found"
    assert "Responses API" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="meta/llama-only", prompt="hi")
    # The chat-only provider serves chat as before, and saw none of the above.
    chat = client.chat.completions.with_raw_response.create(
        model="gpt-r", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.headers["x-best-provider"] == "chatonly"
    only = fleet["chatonly"]
    assert only.response_requests == 0 and only.completion_requests == 0


def test_json_fails_over_before_the_answer(fleet: Fleet) -> None:
    fleet["alpha"].queue(Behavior.server_error(503), model="fo-json")
    raw = fleet.client().responses.with_raw_response.create(model="fo-json", input="again")
    assert raw.headers["x-best-provider"] == "beta"
    assert raw.parse().output_text == "echo: again"
    assert fleet["alpha"].response_requests == 1 and fleet["beta"].response_requests == 1


@pytest.mark.parametrize(
    ("model", "behavior"),
    [
        ("fo-stream", Behavior.stream_dies(after_chunks=0)),
        ("fo-event", Behavior.inband_error("model crashed before answering")),
    ],
    ids=["dies-before-first-event", "error-event-first"],
)
def test_stream_fails_over_before_the_first_event(
    fleet: Fleet, model: str, behavior: Behavior
) -> None:
    fleet["alpha"].queue(behavior, model=model)
    raw = fleet.client().responses.with_raw_response.create(
        model=model, input="fail over", stream=True
    )
    assert raw.headers["x-best-provider"] == "beta"
    events = list(raw.parse())
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[0].response.id in fleet["beta"].stored_responses
    assert fleet["alpha"].response_requests == 1


def test_stream_broken_after_the_first_event_ends_with_an_error_event(fleet: Fleet) -> None:
    fleet["alpha"].queue(Behavior.stream_dies(after_chunks=3), model="mid-die")
    events = list(fleet.client().responses.create(model="mid-die", input="cut", stream=True))
    assert [e.type for e in events[:3]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    last = events[-1]
    assert last.type == "error"
    assert last.code in ("upstream_connect", "upstream_stream_broken") and last.message
    assert last.sequence_number == 3
    assert fleet["beta"].response_requests == 0  # no failover once the client has events


def test_upstream_error_event_after_the_first_event_is_relayed(fleet: Fleet) -> None:
    """A provider's own terminal error event reaches the client as it sent it."""
    # Two events, then the provider's own error event, each a moment after the other (events
    # read together before the first is sent would still fail over).
    crash = dataclasses.replace(
        Behavior.inband_error("overloaded mid-answer"), after_chunks=2, chunk_delay_s=0.2
    )
    fleet["alpha"].queue(crash, model="mid-error")
    with fleet.http() as http:
        answer = http.post(
            "/v1/responses", json={"model": "mid-error", "input": "x", "stream": True}
        )
    wire = _raw_events(answer.text)
    assert [name for name, _ in wire] == ["response.created", "response.in_progress", "error"]
    assert '"type":"error"' in wire[-1][1] and "overloaded mid-answer" in wire[-1][1]
    assert fleet["beta"].response_requests == 0


def test_conversation_continues_at_the_creating_provider(fleet: Fleet) -> None:
    client = fleet.client()
    # Turn 1 pinned to beta (alpha ranks first for "conv" and is healthy).
    first = client.responses.with_raw_response.create(model="beta/conv", input="first turn")
    assert first.headers["x-best-provider"] == "beta"
    second = client.responses.with_raw_response.create(
        model="conv", input="second turn", previous_response_id=first.parse().id
    )
    assert second.headers["x-best-provider"] == "beta"
    assert second.parse().output_text == "echo: second turn | previous: echo: first turn"
    assert fleet["alpha"].response_requests == 0


def test_a_conversation_the_provider_lost_is_its_404_not_a_switch(fleet: Fleet) -> None:
    """The gateway knows the holder, the holder no longer has it: the provider's own 404
    comes back, nothing cools, and no other provider is asked."""
    client = fleet.client()
    created = client.responses.create(model="gone", input="soon forgotten")
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gone", input="again", previous_response_id=created.id)
    assert caught.value.code == "previous_response_not_found"
    assert fleet["beta"].response_requests == 0
    again = client.responses.with_raw_response.create(model="gone", input="fresh")
    assert again.headers["x-best-provider"] == "alpha"  # not cooled by that 404


@pytest.mark.slow  # a client leaving needs a real socket (a gateway process)
def test_a_client_leaving_a_stream_cancels_the_upstream(process_fleet: Fleet) -> None:
    fleet = process_fleet
    fleet.reset()
    fleet["alpha"].queue(Behavior.slow_stream(0.5), model="bye")
    with fleet.http() as http:
        body = {"model": "bye", "input": "a long answer of many words", "stream": True}
        with http.stream("POST", "/v1/responses", json=body) as answer:
            first = next(answer.iter_lines())
            assert first == "event: response.created"
    fleet["alpha"].wait_for_disconnects(1)


def test_usage_feeds_the_token_metrics(fleet: Fleet) -> None:
    client = fleet.client()
    client.responses.create(model="gpt-r", input="count these four words")
    with fleet.http(token=None) as http:
        metrics = http.get("/metrics").text
    pattern = (
        r'gen_ai_client_token_usage_sum\{[^}]*gen_ai_operation_name="responses"'
        r'[^}]*gen_ai_token_type="output"[^}]*\} ([0-9.e+]+)'
    )
    found = re.search(pattern, metrics)
    assert found is not None and float(found.group(1)) >= 6  # "echo: count these four words"


# -- legacy completions ------------------------------------------------------------------------


def test_legacy_completion_json(fleet: Fleet) -> None:
    raw = fleet.client().completions.with_raw_response.create(model="gpt-r", prompt="say hi")
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "echo: say hi"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    assert raw.headers["x-best-provider"] == "alpha"
    assert fleet["chatonly"].completion_requests == 0


def test_legacy_completion_streaming_with_usage(fleet: Fleet) -> None:
    chunks = list(
        fleet.client().completions.create(
            model="gpt-r",
            prompt="stream some words",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "echo: stream some words"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    # Without include_usage the extra usage chunk the gateway asked for is not forwarded.
    plain = list(fleet.client().completions.create(model="gpt-r", prompt="x", stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)


def test_legacy_completion_fails_over(fleet: Fleet) -> None:
    fleet["alpha"].queue(Behavior.server_error(502), model="fo-cmpl")
    raw = fleet.client().completions.with_raw_response.create(model="fo-cmpl", prompt="again")
    assert raw.headers["x-best-provider"] == "beta"
    assert raw.parse().choices[0].text == "echo: again"


# -- models.retrieve ---------------------------------------------------------------------------


def test_models_retrieve_with_a_slash_in_the_id(fleet: Fleet) -> None:
    model = fleet.client().models.retrieve("org/model-a")
    assert model.id == "org/model-a" and model.object == "model"
    assert model.owned_by == "alpha"
    providers: list[dict[str, Any]] = model.model_extra["providers"]  # type: ignore[index]
    assert [p["provider"] for p in providers] == ["alpha"]
    score = providers[0]["score"]
    assert set(score) == {"static", "live", "live_factor", "total"}
    assert score["total"] == pytest.approx(score["static"] + score["live"])
    assert score["total"] == pytest.approx(score["static"] * score["live_factor"])
    assert providers[0]["breaker"] == "closed"
    assert providers[0]["provider_cooling"] is False

    shared = fleet.client().models.retrieve("gpt-r")
    ranked = [p["provider"] for p in shared.model_extra["providers"]]  # type: ignore[index]
    assert ranked == ["chatonly", "alpha", "beta"]
    with pytest.raises(openai.NotFoundError):
        fleet.client().models.retrieve("org/no-such-model")


# -- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/responses", [1, 2], 400),
        ("/v1/responses", {"model": 7, "input": "x"}, 400),
        ("/v1/responses", {"model": "gpt-r"}, 400),
        ("/v1/responses", {"model": "gpt-r", "input": 5}, 400),
        ("/v1/responses", {"model": "gpt-r", "input": [3]}, 400),
        ("/v1/responses", {"model": "gpt-r", "input": "x", "stream": "yes"}, 400),
        ("/v1/responses", {"model": "gpt-r", "input": "x", "max_output_tokens": -1}, 400),
        ("/v1/responses", {"model": "gpt-r", "input": "x", "previous_response_id": ""}, 400),
        ("/v1/responses", {"model": "gpt-r", "input": "x", "previous_response_id": "a b"}, 400),
        ("/v1/responses", {"model": "gpt-r", "input": "x", "previous_response_id": "resp_x"}, 404),
        ("/v1/responses", {"model": "no-such", "input": "x"}, 404),
        ("/v1/completions", {"model": "gpt-r"}, 400),
        ("/v1/completions", {"model": "gpt-r", "prompt": []}, 400),
        ("/v1/completions", {"model": "gpt-r", "prompt": "x", "max_tokens": "9"}, 400),
    ],
)
def test_bad_inputs_get_openai_shaped_4xx(fleet: Fleet, path: str, body: Any, status: int) -> None:
    with fleet.http() as http:
        assert_openai_error(http.post(path, json=body), status)
    assert fleet["alpha"].response_requests == 0 and fleet["beta"].response_requests == 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/responses/resp_unknown", 404),
        ("DELETE", "/v1/responses/resp_unknown", 404),
        ("GET", "/v1/responses/resp_unknown/input_items", 404),
        ("POST", "/v1/responses/resp_unknown/cancel", 404),
        ("GET", "/v1/responses/resp_x/cancel", 405),
        ("PUT", "/v1/responses/resp_x", 405),
        ("POST", "/v1/models/gpt-r", 405),
        ("GET", "/v1/models/no%2Fsuch", 404),
        ("GET", "/v1/responses", 405),
    ],
)
def test_bad_routes_get_openai_shaped_4xx(
    fleet: Fleet, method: str, path: str, status: int
) -> None:
    with fleet.http() as http:
        assert_openai_error(http.request(method, path), status)


def test_invalid_json_and_no_token(fleet: Fleet) -> None:
    with fleet.http() as http:
        broken = http.post(
            "/v1/responses", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_openai_error(broken, 400, "invalid_json")
    with fleet.http(token=None) as anonymous:
        for method, path in [
            ("POST", "/v1/responses"),
            ("GET", "/v1/responses/resp_1"),
            ("POST", "/v1/completions"),
            ("GET", "/v1/models/org/model-a"),
        ]:
            assert_openai_error(anonymous.request(method, path, content=b"junk"), 401)
