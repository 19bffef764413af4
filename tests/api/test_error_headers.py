"""An error answer of a routed call carries the caller's rate-limit headers, as a success does:
a client backing off reads them from the 502 as well as from the 200. Chat and the Responses
API alike, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.app import App
from tests.fakes.upstream import Behavior, FakeProvider
from tests.harness import write_config
from tests.inprocess import ADMIN_TOKEN, client, inprocess_settings, running_app

pytestmark = pytest.mark.anyio

RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests")
CALLS = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "m", "input": "hi"},
}


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, FakeProvider]]:
    with FakeProvider(["m"], api_key="k") as provider:
        config = write_config(
            tmp_path / "config",
            [
                {
                    "name": "p",
                    "api_key_env_var": "P_KEY",
                    "base_url": provider.base_url,
                    "base_priority": 1,
                    "models": ["m"],
                    "apis": ["chat", "responses"],
                }
            ],
        )
        settings = inprocess_settings(config, tmp_path / "data", env={"P_KEY": "k"})
        async with running_app(settings) as app:
            yield app, provider


async def limited_token(app: App, **limits: int) -> str:
    async with client(app, ADMIN_TOKEN) as admin:
        created = await admin.post("/admin/tokens", json={"name": "limited", **limits})
    assert created.status_code == 201, created.text
    token: str = created.json()["token"]
    return token


@pytest.mark.parametrize("path", list(CALLS))
async def test_an_upstream_failure_still_carries_the_rate_limit_headers(
    app: tuple[App, FakeProvider], path: str
) -> None:
    gateway, provider = app
    token = await limited_token(gateway, rpm=10)
    async with client(gateway, token) as http:
        ok = await http.post(path, json=CALLS[path])
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-remaining-requests"] == "9"
        provider.set_behavior(Behavior.server_error(500))
        failed: httpx.Response = await http.post(path, json=CALLS[path])
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"]["message"]
    assert {h: failed.headers.get(h) for h in RATE_HEADERS} == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "8",
    }
