"""Admission in process, on the embedded store and on a real Redis server (started once per
session): a token's rpm, tpm and concurrency limits refuse with a 429 in OpenAI's shape, with
Retry-After and the ``x-ratelimit-*`` headers; a refused request never reaches a provider; a
team's limit binds all its tokens together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.app import App
from tests.fakes.upstream import Behavior, FakeProvider
from tests.harness import RedisServer, write_config
from tests.inprocess import (
    ADMIN_TOKEN,
    client,
    create_token,
    inprocess_settings,
    provider_entry,
    provider_keys,
    running_app,
)

pytestmark = pytest.mark.anyio


def chat(max_tokens: int = 10) -> dict[str, object]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }


@dataclass
class Gateway:
    app: App
    provider: FakeProvider

    async def post_as(self, token: str, body: dict[str, object]) -> httpx.Response:
        async with client(self.app, token) as http:
            return await http.post("/v1/chat/completions", json=body)


@pytest.fixture(params=["memory", "redis"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    redis_url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_url = server.url
    with FakeProvider(["m"], api_key="k") as provider:
        config = write_config(
            tmp_path / "config", [provider_entry("p", provider.base_url, 1.0, models=["m"])]
        )
        settings = inprocess_settings(
            config, tmp_path / "data", env=provider_keys(["p"]), redis_url=redis_url
        )
        async with running_app(settings) as app:
            yield Gateway(app, provider)


def assert_refused(answer: httpx.Response, what: str) -> None:
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert what in error["message"], error["message"]
    assert int(answer.headers["retry-after"]) >= 1


async def test_rpm_refuses_the_request_over_the_limit(gateway: Gateway) -> None:
    token = await create_token(gateway.app, rpm=2)
    remaining = []
    for _ in range(2):
        answer = await gateway.post_as(token, chat())
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-ratelimit-limit-requests"] == "2"
        remaining.append(answer.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["1", "0"]
    refused = await gateway.post_as(token, chat())
    assert_refused(refused, "requests per minute of this token")
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert gateway.provider.chat_requests == 2, "a refused request reached the provider"


async def test_tpm_refuses_what_the_requests_in_flight_leave_no_room_for(
    gateway: Gateway,
) -> None:
    token = await create_token(gateway.app, tpm=100)
    gateway.provider.set_behavior(Behavior.held())
    first = asyncio.create_task(gateway.post_as(token, chat(max_tokens=60)))
    await asyncio.to_thread(gateway.provider.wait_for_in_flight, 1)
    # The first request holds its estimate (prompt + max_tokens) while in flight.
    refused = await gateway.post_as(token, chat(max_tokens=60))
    assert_refused(refused, "tokens per minute of this token")
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    gateway.provider.set_behavior(Behavior.ok())
    gateway.provider.release()
    assert (await first).status_code == 200
    assert gateway.provider.chat_requests == 1


async def test_a_request_larger_than_tpm_is_refused(gateway: Gateway) -> None:
    token = await create_token(gateway.app, tpm=100)
    assert_refused(await gateway.post_as(token, chat(max_tokens=500)), "tokens per minute")
    assert gateway.provider.chat_requests == 0


async def test_max_concurrency_refuses_while_the_slot_is_taken(gateway: Gateway) -> None:
    token = await create_token(gateway.app, max_concurrency=1)
    gateway.provider.set_behavior(Behavior.held())
    first = asyncio.create_task(gateway.post_as(token, chat()))
    await asyncio.to_thread(gateway.provider.wait_for_in_flight, 1)
    assert_refused(await gateway.post_as(token, chat()), "concurrent requests of this token")
    gateway.provider.set_behavior(Behavior.ok())
    gateway.provider.release()
    assert (await first).status_code == 200
    # The slot is free again as soon as the first answer is out.
    assert (await gateway.post_as(token, chat())).status_code == 200


async def test_a_team_limit_binds_its_tokens_together(gateway: Gateway) -> None:
    async with client(gateway.app, ADMIN_TOKEN) as admin:
        team = await admin.post("/admin/teams", json={"name": "t", "rpm": 1})
    assert team.status_code == 201, team.text
    team_id = team.json()["id"]
    first, second = [await create_token(gateway.app, team=team_id) for _ in range(2)]
    assert (await gateway.post_as(first, chat())).status_code == 200
    assert_refused(await gateway.post_as(second, chat()), "requests per minute of this team")
    assert gateway.provider.chat_requests == 1


async def test_an_unlimited_token_gets_no_rate_limit_headers(gateway: Gateway) -> None:
    token = await create_token(gateway.app)
    answer = await gateway.post_as(token, chat())
    assert answer.status_code == 200
    assert not [h for h in answer.headers if h.startswith("x-ratelimit-")]
