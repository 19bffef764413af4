"""Errors on Anthropic's routes, in Anthropic's shape and types, and the quota headers under
Anthropic's names; the rendering table for every error class."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from service import errors
from service.api.http import anthropic_error_response
from service.app import App
from tests.anthropic.conftest import KEYS, sdk, transport
from tests.fakes.upstream import Behavior, FakeProvider
from tests.inprocess import USER_TOKEN, inprocess_settings, running_app

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "hello there"}]
AUTH = {"x-api-key": USER_TOKEN}
Providers = tuple[FakeProvider, FakeProvider, FakeProvider]


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """The message of an error answered as Anthropic does; fails on any other shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert response.headers["request-id"] == response.headers["x-request-id"]
    message: str = body["error"]["message"]
    return message


@pytest.fixture
async def limited(config_dir: Path, tmp_path: Path, providers: object) -> AsyncIterator[App]:
    """The gateway with rpm 2 for its static token, and a 2 KiB body limit."""
    settings = inprocess_settings(
        config_dir, tmp_path, env=KEYS, default_rpm=2, max_body_bytes=2048
    )
    async with running_app(settings) as app:
        yield app


async def test_bad_requests_are_invalid_request_errors(app: App) -> None:
    async with transport(app) as http:
        no_cap = {"model": "m", "messages": HELLO}
        message = anthropic_error(
            await http.post("/v1/messages", json=no_cap, headers=AUTH), 400, "invalid_request_error"
        )
        assert "max_tokens" in message
        no_messages = {"model": "m", "max_tokens": 5}
        anthropic_error(
            await http.post("/v1/messages", json=no_messages, headers=AUTH),
            400,
            "invalid_request_error",
        )
        anthropic_error(
            await http.post("/v1/messages", content=b"{nope", headers=AUTH),
            400,
            "invalid_request_error",
        )
        anthropic_error(await http.get("/v1/messages", headers=AUTH), 405, "invalid_request_error")


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image", "source": {"type": {}}}],
        [{"type": "document", "source": {"type": "content", "content": [5]}}],
        [{"type": "document", "source": {"type": "content", "content": [{"type": "text"}]}}],
    ],
)
async def test_malformed_sources_are_invalid_requests_not_crashes(
    app: App, content: list[Any]
) -> None:
    request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    async with transport(app) as http:
        response = await http.post("/v1/messages", json=request, headers=AUTH)
    assert "source" in anthropic_error(response, 400, "invalid_request_error")


async def test_an_unknown_model_is_not_found(app: App) -> None:
    body = {"model": "gpt-nothing", "max_tokens": 5, "messages": HELLO}
    async with transport(app) as http:
        message = anthropic_error(
            await http.post("/v1/messages", json=body, headers=AUTH), 404, "not_found_error"
        )
    assert "gpt-nothing" in message
    with pytest.raises(anthropic.NotFoundError):
        await sdk(app).messages.create(model="gpt-nothing", max_tokens=5, messages=HELLO)


async def test_a_large_body_is_request_too_large(limited: App) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 4096}]}
    async with transport(limited) as http:
        anthropic_error(
            await http.post("/v1/messages", json=body, headers=AUTH), 413, "request_too_large"
        )


async def test_rpm_on_messages_with_anthropic_headers(limited: App) -> None:
    """Two requests a minute: count_tokens uses none of them; the third message is a 429
    rate_limit_error with retry-after; the quota headers come under both names."""
    client = sdk(limited)
    for _ in range(3):
        await client.messages.count_tokens(model="m", messages=HELLO)
    remaining = []
    for _ in range(2):
        raw = await client.messages.with_raw_response.create(
            model="m", max_tokens=5, messages=HELLO
        )
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "2"
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        remaining.append(raw.headers["anthropic-ratelimit-requests-remaining"])
    assert remaining == ["1", "0"]
    async with transport(limited) as http:
        body = {"model": "m", "max_tokens": 5, "messages": HELLO}
        refused = await http.post("/v1/messages", json=body, headers=AUTH)
    anthropic_error(refused, 429, "rate_limit_error")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"


async def test_every_candidate_rate_limited_is_overloaded(app: App, providers: Providers) -> None:
    """Providers' 429s cool them: the answer is 529 overloaded_error with retry-after, at
    once and while they cool (the SDK retries these on its own)."""
    chat_p, chat_q, _ = providers
    chat_p.set_behavior(Behavior.rate_limited(retry_after=30))
    chat_q.set_behavior(Behavior.rate_limited(retry_after=30))
    body = {"model": "m", "max_tokens": 5, "messages": HELLO}
    async with transport(app) as http:
        first = await http.post("/v1/messages", json=body, headers=AUTH)
        cooling = await http.post("/v1/messages", json=body, headers=AUTH)
    anthropic_error(first, 529, "overloaded_error")
    anthropic_error(cooling, 529, "overloaded_error")
    assert 1 <= int(cooling.headers["retry-after"]) <= 30
    assert chat_p.chat_requests == 1 and chat_q.chat_requests == 1  # cooling: not asked again
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await sdk(app).messages.create(model="m", max_tokens=5, messages=HELLO)
    assert overloaded.value.status_code == 529


async def test_upstream_failures_are_api_errors(app: App, providers: Providers) -> None:
    chat_p, chat_q, _ = providers
    chat_p.queue(Behavior.server_error(500))
    chat_q.queue(Behavior.server_error(502))
    body = {"model": "m", "max_tokens": 5, "messages": HELLO}
    async with transport(app) as http:
        failed = await http.post("/v1/messages", json=body, headers=AUTH)
    assert "2 tried" in anthropic_error(failed, 502, "api_error")


async def test_a_chat_providers_refusal_comes_in_anthropic_shape(
    app: App, providers: Providers
) -> None:
    providers[0].queue(Behavior.bad_request("Invalid value for 'temperature'."))
    body = {"model": "m", "max_tokens": 5, "messages": HELLO}
    async with transport(app) as http:
        refused = await http.post("/v1/messages", json=body, headers=AUTH)
    message = anthropic_error(refused, 400, "invalid_request_error")
    assert message == "Invalid value for 'temperature'."
    assert refused.headers["x-best-provider"] == "p"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (errors.bad_request("x"), 400, "invalid_request_error"),
        (errors.unauthorized("x"), 401, "authentication_error"),
        (errors.model_not_found("x"), 404, "not_found_error"),
        (errors.payload_too_large(1), 413, "request_too_large"),
        (errors.QuotaExceeded("x", retry_after_s=3), 429, "rate_limit_error"),
        (errors.BudgetExceeded("x", retry_after_s=3), 429, "rate_limit_error"),
        (errors.ProvidersRateLimited("x", retry_after_s=3), 529, "overloaded_error"),
        (errors.BreakersOpen("x", retry_after_s=3), 529, "overloaded_error"),
        (errors.unavailable("no keys"), 503, "api_error"),
        (errors.UpstreamFailed("x"), 502, "api_error"),
        (errors.UpstreamTimeout("x"), 504, "api_error"),
        (errors.InternalError("x"), 500, "api_error"),
    ],
)
def test_every_error_class_has_its_anthropic_status_and_type(
    error: errors.GatewayError, status: int, kind: str
) -> None:
    response = anthropic_error_response(error)
    assert response.status == status
    assert orjson.loads(response.body) == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
    }
    headers: dict[bytes, Any] = dict(response.headers)
    assert (b"retry-after" in headers) == (error.retry_after_s is not None)
