"""Stored conversations in process: a follow-up (``previous_response_id``) and every call about
a stored response go to the provider that holds it, and nowhere else; when that provider
cannot be reached the answer is a 503 naming it (with the caller's rate-limit headers), never a
silent switch to a provider that does not know the conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.app import App
from tests.fakes.upstream import Behavior, FakeProvider
from tests.harness import write_config
from tests.inprocess import (
    FIXED_ORDER,
    client,
    create_token,
    inprocess_settings,
    provider_entry,
    provider_keys,
    running_app,
)

pytestmark = pytest.mark.anyio


@dataclass
class Pair:
    app: App
    http: httpx.AsyncClient
    p1: FakeProvider
    p2: FakeProvider
    held_id: str  # a response p2 answered (p1 failed first), so p2 holds it


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async with AsyncExitStack() as stack:
        p1, p2 = (stack.enter_context(FakeProvider(["m"], api_key="k")) for _ in range(2))
        entries = [
            provider_entry(name, fake.base_url, priority, models=["m"], apis=["responses"])
            for name, fake, priority in (("p1", p1, 1.0), ("p2", p2, 0.5))
        ]
        config = write_config(tmp_path / "config", entries, scoring=FIXED_ORDER)
        settings = inprocess_settings(config, tmp_path / "data", env=provider_keys(["p1", "p2"]))
        app = await stack.enter_async_context(running_app(settings))
        http = await stack.enter_async_context(client(app))
        p1.queue(Behavior.server_error(500))
        created = await http.post("/v1/responses", json={"model": "m", "input": "hello"})
        assert created.status_code == 200, created.text
        assert created.headers["x-best-provider"] == "p2"
        held_id = created.json()["id"]
        assert held_id in p2.stored_responses and held_id not in p1.stored_responses
        p1.clear()
        p2.clear()
        yield Pair(app, http, p1, p2, held_id)


def follow_up(previous: str) -> dict[str, str]:
    return {"model": "m", "input": "and then?", "previous_response_id": previous}


async def test_a_follow_up_goes_to_the_provider_holding_the_conversation(pair: Pair) -> None:
    # p1 is first in the order and healthy again, but does not hold the conversation.
    answer = await pair.http.post("/v1/responses", json=follow_up(pair.held_id))
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-best-provider"] == "p2"
    assert pair.p1.response_requests == 0
    [sent] = [r for r in pair.p2.requests if r.path == "/v1/responses"]
    assert sent.body["previous_response_id"] == pair.held_id
    # The new response is recorded too: its own follow-up also goes to p2.
    again = await pair.http.post("/v1/responses", json=follow_up(answer.json()["id"]))
    assert again.headers["x-best-provider"] == "p2"
    assert pair.p1.response_requests == 0


async def test_stored_response_calls_go_to_the_holder(pair: Pair) -> None:
    got = await pair.http.get(f"/v1/responses/{pair.held_id}")
    assert got.status_code == 200, got.text
    assert got.json()["id"] == pair.held_id
    assert got.headers["x-best-provider"] == "p2"
    items = await pair.http.get(f"/v1/responses/{pair.held_id}/input_items")
    assert items.status_code == 200, items.text
    assert items.json()["object"] == "list"
    deleted = await pair.http.delete(f"/v1/responses/{pair.held_id}")
    assert deleted.status_code == 200, deleted.text
    assert pair.held_id not in pair.p2.stored_responses
    assert pair.p1.requests == []


async def test_an_unknown_response_id_is_a_404(pair: Pair) -> None:
    for answer in (
        await pair.http.get("/v1/responses/resp_never_seen"),
        await pair.http.post("/v1/responses", json=follow_up("resp_never_seen")),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "response_not_found"
    assert pair.p1.requests == [] and pair.p2.requests == []


async def test_an_unreachable_holder_is_a_503_naming_it_not_a_switch(pair: Pair) -> None:
    token = await create_token(pair.app, rpm=10)
    pair.p2.stop()
    async with client(pair.app, token) as http:
        answer = await http.post("/v1/responses", json=follow_up(pair.held_id))
        stored = await http.get(f"/v1/responses/{pair.held_id}")
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "conversation_provider_unavailable"
    assert "`p2`" in error["message"] and pair.held_id in error["message"]
    # The error answer still tells the caller where its own limits stand.
    assert answer.headers["x-ratelimit-limit-requests"] == "10"
    assert answer.headers["x-ratelimit-remaining-requests"] == "9"
    assert stored.status_code == 503, stored.text
    assert stored.json()["error"]["code"] == "conversation_provider_unavailable"
    assert pair.p1.requests == [], "the conversation was sent to a provider that lacks it"


async def test_a_holder_answering_5xx_is_a_503_naming_it(pair: Pair) -> None:
    pair.p2.queue(Behavior.server_error(500))
    answer = await pair.http.post("/v1/responses", json=follow_up(pair.held_id))
    assert answer.status_code == 503, answer.text
    assert "`p2`" in answer.json()["error"]["message"]
    assert pair.p1.response_requests == 0
