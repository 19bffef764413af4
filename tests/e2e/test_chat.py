"""Chat completions and embeddings through the running gateway with the real ``openai``
client: what is relayed, to whom, with which key, and how a requested model resolves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import (
    TOKEN,
    Fleet,
    ProviderSpec,
    chat_body,
    provider_key,
    start_fleet,
)
from tests.fakes.upstream import Behavior, chat_usage, fake_embedding

# alpha scores highest, then beta, then gamma (2 x base_priority each); embeddings and
# "low-" models sit below zero.
SPECS = [
    ProviderSpec("alpha", ["chat-a", "shared-model", "comma-y", "text-embed-2"], priority=3),
    ProviderSpec("beta", ["chat-b", "shared-model", "org/slash-model", "text-embed-2"], priority=2),
    ProviderSpec("gamma", ["chat-c", "shared-model", "comma-x", "text-embed-1", "low-chat"]),
]
ADJUSTMENTS = {
    "all": {"priority": 1, "regex": ["."]},
    "not_chat": {"priority": -1000, "regex": ["embed", "^low-"]},
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory: Path = tmp_path_factory.mktemp("chat-config")
    fleet = start_fleet(directory, SPECS, adjustments=ADJUSTMENTS, inprocess=True)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def process_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The same fleet behind a gateway process: a client leaving closes a real socket."""
    fleet = start_fleet(tmp_path_factory.mktemp("chat-process"), SPECS, adjustments=ADJUSTMENTS)
    yield fleet
    fleet.stop()


@pytest.fixture(autouse=True)
def _reset(fleet: Fleet) -> None:
    fleet.reset()


def served_by(response: httpx.Response | openai._legacy_response.LegacyAPIResponse) -> tuple:
    return response.headers["x-best-provider"], response.headers["x-best-model"]


def test_chat_answer_and_headers_through_the_openai_client(fleet: Fleet) -> None:
    client = fleet.client()
    raw = client.chat.completions.with_raw_response.create(
        model="chat-a", messages=[{"role": "user", "content": "hi gateway"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hi gateway"
    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == chat_usage(
        chat_body(text="hi gateway")
    )
    assert served_by(raw) == ("alpha", "chat-a")
    assert len(raw.headers["x-request-id"]) >= 8
    assert fleet["alpha"].chat_requests == 1


def test_incoming_request_id_is_echoed(fleet: Fleet) -> None:
    with fleet.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json=chat_body("chat-b"),
            headers={"x-request-id": "trace-42.abc"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42.abc"


def test_unusable_incoming_request_id_is_replaced(fleet: Fleet) -> None:
    with fleet.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json=chat_body("chat-b"),
            headers={"x-request-id": "has spaces and / slashes"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] not in ("", "has spaces and / slashes")


def test_provider_gets_its_own_key_never_the_gateway_token(fleet: Fleet) -> None:
    fleet.client().chat.completions.create(
        model="shared-model", messages=[{"role": "user", "content": "secret?"}]
    )
    (request,) = fleet["alpha"].requests
    assert request.headers["Authorization"] == f"Bearer {provider_key('alpha')}"
    for name, value in request.headers.items():
        assert TOKEN not in value, name


def test_every_field_but_model_passes_through_untouched(fleet: Fleet) -> None:
    sent = {
        "model": "beta/chat-b",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "parts"}]},
        ],
        "temperature": 0.25,
        "top_p": 0.5,
        "max_tokens": 17,
        "seed": 7,
        "stop": ["\n\n"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "response_format": {"type": "text"},
        "x_vendor_extension": {"nested": [1, 2.5, None, True], "unicode": "héllo ☃"},
        "user": "end-user-1",
    }
    with fleet.http() as http:
        response = http.post("/v1/chat/completions", json=sent)
    assert response.status_code == 200, response.text
    (request,) = fleet["beta"].requests
    assert request.body == {**sent, "model": "chat-b"}


def test_tool_calls_come_back(fleet: Fleet) -> None:
    completion = fleet.client().chat.completions.create(
        model="chat-c",
        messages=[{"role": "user", "content": "what is the weather"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
        tool_choice="auto",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == "{}"
    (request,) = fleet["gamma"].requests
    assert request.body["tool_choice"] == "auto"


def test_priority_auto_and_missing_model_pick_the_best_pair(fleet: Fleet) -> None:
    client = fleet.client()
    raw = client.chat.completions.with_raw_response.create(
        model="priority-auto", messages=[{"role": "user", "content": "x"}]
    )
    assert served_by(raw) == ("alpha", "chat-a")
    assert fleet["alpha"].requests[-1].model == "chat-a"
    with fleet.http() as http:
        response = http.post("/v1/chat/completions", json=chat_body(None))
    assert response.status_code == 200, response.text
    assert served_by(response) == ("alpha", "chat-a")
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"


def test_exact_id_served_by_several_goes_to_the_best_first(fleet: Fleet) -> None:
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="shared-model", messages=[{"role": "user", "content": "x"}]
    )
    assert served_by(raw) == ("alpha", "shared-model")
    assert fleet["beta"].chat_requests == fleet["gamma"].chat_requests == 0


@pytest.mark.parametrize("provider", ["beta", "gamma"])
def test_provider_slash_model_pins_one_provider(fleet: Fleet, provider: str) -> None:
    raw = fleet.client().chat.completions.with_raw_response.create(
        model=f"{provider}/shared-model", messages=[{"role": "user", "content": "x"}]
    )
    assert served_by(raw) == (provider, "shared-model")
    assert fleet[provider].requests[-1].model == "shared-model"
    assert fleet["alpha"].chat_requests == 0


def test_model_id_with_a_slash_that_is_not_a_provider(fleet: Fleet) -> None:
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="org/slash-model", messages=[{"role": "user", "content": "x"}]
    )
    assert served_by(raw) == ("beta", "org/slash-model")
    assert fleet["beta"].requests[-1].model == "org/slash-model"


def test_comma_list_is_tried_in_the_order_given(fleet: Fleet) -> None:
    client = fleet.client()
    # gamma scores lowest, but the list puts its model first.
    raw = client.chat.completions.with_raw_response.create(
        model="comma-x,comma-y", messages=[{"role": "user", "content": "x"}]
    )
    assert served_by(raw) == ("gamma", "comma-x")
    fleet["gamma"].queue(Behavior.server_error(500), model="comma-x")
    raw = client.chat.completions.with_raw_response.create(
        model="comma-x,comma-y", messages=[{"role": "user", "content": "x"}]
    )
    assert served_by(raw) == ("alpha", "comma-y")
    assert [r.model for r in fleet["gamma"].requests] == ["comma-x", "comma-x"]


def test_unknown_model_is_404_model_not_found(fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        fleet.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert sum(f.chat_requests for f in fleet.fakes.values()) == 0


def test_pinning_a_model_the_provider_lacks_is_404(fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        fleet.client().chat.completions.create(
            model="alpha/chat-b", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"


def test_negative_score_model_is_reachable_by_exact_id_only(fleet: Fleet) -> None:
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="low-chat", messages=[{"role": "user", "content": "x"}]
    )
    assert served_by(raw) == ("gamma", "low-chat")
    listed = {m.id for m in fleet.client().models.list()}
    assert {"low-chat", "text-embed-1", "priority-auto"} <= listed


def test_models_list_every_requestable_id_with_providers_best_first(fleet: Fleet) -> None:
    with fleet.http() as http:
        response = http.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    expected = {m for spec in SPECS for m in spec.models} | {"priority-auto"}
    assert set(by_id) == expected
    assert by_id["shared-model"]["providers"] == ["alpha", "beta", "gamma"]
    assert all(m["object"] == "model" for m in body["data"])
    models = fleet.client().models.list()
    assert {m.id for m in models} == expected


def test_embeddings_by_exact_id(fleet: Fleet) -> None:
    raw = fleet.client().embeddings.with_raw_response.create(
        model="text-embed-1", input=["one two", "three"], encoding_format="float"
    )
    result = raw.parse()
    expected = [fake_embedding("one two"), fake_embedding("three")]
    assert [d.embedding for d in result.data] == expected
    assert served_by(raw) == ("gamma", "text-embed-1")
    assert fleet["gamma"].embedding_requests == 1
    (request,) = fleet["gamma"].requests
    assert request.path == "/v1/embeddings"
    assert request.headers["Authorization"] == f"Bearer {provider_key('gamma')}"


def test_embeddings_fail_over_too(fleet: Fleet) -> None:
    client = fleet.client()
    first = client.embeddings.with_raw_response.create(model="text-embed-2", input="x")
    provider, _ = served_by(first)
    other = "beta" if provider == "alpha" else "alpha"
    fleet[provider].queue(Behavior.server_error(503), model="text-embed-2")
    second = client.embeddings.with_raw_response.create(
        model="text-embed-2", input="y", encoding_format="float"
    )
    assert served_by(second) == (other, "text-embed-2")
    assert second.parse().data[0].embedding == fake_embedding("y")


def test_embeddings_unknown_model_is_404(fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        fleet.client().embeddings.create(model="nope-embed", input="x")
    assert caught.value.code == "model_not_found"


def test_usage_matches_what_the_provider_reported(fleet: Fleet) -> None:
    body = chat_body("chat-b", text="count these four words")
    with fleet.http() as http:
        response = http.post("/chat/completions", json=body)  # the route without /v1 too
    assert response.status_code == 200
    assert response.json()["usage"] == chat_usage(body)


@pytest.mark.slow  # a client leaving needs a real socket (a gateway process)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/chat/completions", chat_body("chat-a"), id="chat"),
        pytest.param("/v1/embeddings", {"model": "text-embed-2", "input": "x"}, id="embeddings"),
    ],
)
def test_client_that_leaves_cancels_the_upstream_at_once(
    process_fleet: Fleet, path: str, body: dict
) -> None:
    fleet = process_fleet
    fleet.reset()
    for name in ("alpha", "beta"):  # whichever is tried first never answers
        fleet[name].set_behavior(Behavior.hang())
    with fleet.http() as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(path, json=body, timeout=httpx.Timeout(20, read=0.5))
        left_at = time.monotonic()
    (fake,) = [fleet[n] for n in ("alpha", "beta") if fleet[n].requests]
    fake.wait_for_disconnects(1, timeout=3)
    assert time.monotonic() - left_at < 2.5  # the upstream would never have answered
    fake.wait_until(lambda: fake.in_flight == 0, timeout=3)
