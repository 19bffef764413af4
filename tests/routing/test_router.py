"""The router in process: failover on a 5xx, a timeout and a 429; hedging (the first answer
wins, the loser is cancelled); breakers opening after ``failure_threshold`` failures in a row,
then half-open with one probe. Two or three fake providers on loopback serve model ``m`` in a
fixed order (``p1`` first); what each one received shows where the gateway sent a request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import App
from tests.fakes.upstream import Behavior, FakeProvider
from tests.harness import write_config
from tests.inprocess import (
    FIXED_ORDER,
    client,
    inprocess_settings,
    provider_entry,
    provider_keys,
    running_app,
)

pytestmark = pytest.mark.anyio

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Fleet:
    app: App
    http: httpx.AsyncClient
    providers: list[FakeProvider]

    async def chat(self, **headers: str) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json=CHAT, headers=headers)

    def received(self) -> list[int]:
        """Chat requests each provider received, p1 first."""
        return [p.chat_requests for p in self.providers]


@asynccontextmanager
async def fleet(
    tmp_path: Path,
    count: int = 2,
    scoring: dict[str, Any] | None = None,
    **provider_extra: Any,
) -> AsyncIterator[Fleet]:
    names = [f"p{i + 1}" for i in range(count)]
    async with AsyncExitStack() as stack:
        fakes = [stack.enter_context(FakeProvider(["m"], api_key="k")) for _ in names]
        entries = [
            provider_entry(name, fake.base_url, 1.0 / (i + 1), models=["m"], **provider_extra)
            for i, (name, fake) in enumerate(zip(names, fakes, strict=True))
        ]
        config = write_config(
            tmp_path / "config", entries, scoring={**FIXED_ORDER, **(scoring or {})}
        )
        settings = inprocess_settings(config, tmp_path / "data", env=provider_keys(names))
        app = await stack.enter_async_context(running_app(settings))
        http = await stack.enter_async_context(client(app))
        yield Fleet(app, http, fakes)


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-best-provider"]


async def test_a_healthy_first_provider_serves_alone(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        assert served_by(await f.chat()) == "p1"
        assert f.received() == [1, 0]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_5xx_fails_over_to_the_next_provider(tmp_path: Path, status: int) -> None:
    async with fleet(tmp_path) as f:
        f.providers[0].queue(Behavior.server_error(status))
        answer = await f.chat()
        assert served_by(answer) == "p2"
        assert answer.json()["choices"][0]["message"]["content"]
        assert f.received() == [1, 1]


async def test_a_timeout_fails_over_and_the_abandoned_request_is_closed(tmp_path: Path) -> None:
    async with fleet(tmp_path, timeout_s=0.3) as f:
        f.providers[0].queue(Behavior.hang())
        started = time.monotonic()
        assert served_by(await f.chat()) == "p2"
        assert time.monotonic() - started < 5
        await asyncio.to_thread(f.providers[0].wait_for_disconnects, 1)


async def test_a_429_fails_over_and_cools_the_provider_for_its_retry_after(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path) as f:
        f.providers[0].queue(Behavior.rate_limited(retry_after=30))
        assert served_by(await f.chat()) == "p2"
        # Cooling: the next requests do not even try p1.
        for _ in range(3):
            assert served_by(await f.chat()) == "p2"
        assert f.received() == [1, 4]


async def test_every_candidate_rate_limited_is_a_429_with_retry_after(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        for provider in f.providers:
            provider.queue(Behavior.rate_limited(retry_after=7))
        answer = await f.chat()
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= float(answer.headers["retry-after"]) <= 7


async def test_every_candidate_failing_is_a_502_naming_the_last_error(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        for provider in f.providers:
            provider.queue(Behavior.server_error(500))
        answer = await f.chat()
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["message"]
        assert f.received() == [1, 1]


async def test_a_client_error_is_relayed_without_failover(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        f.providers[0].queue(Behavior.bad_request("Invalid value for 'temperature'."))
        answer = await f.chat()
        assert answer.status_code == 400
        assert answer.json()["error"]["message"] == "Invalid value for 'temperature'."
        assert f.received() == [1, 0]


# -- hedging ---------------------------------------------------------------------------------


HEDGE_AFTER = {"hedging": [{"models": ["^m$"], "after_ms": 50}]}


async def test_a_hedge_lets_the_first_answer_win_and_cancels_the_loser(tmp_path: Path) -> None:
    async with fleet(tmp_path, scoring=HEDGE_AFTER) as f:
        slow, fast = f.providers
        slow.queue(Behavior.ok(delay_s=10))
        started = time.monotonic()
        assert served_by(await f.chat()) == "p2"
        assert time.monotonic() - started < 5, "the slow first candidate was waited for"
        assert f.received() == [1, 1]
        # The loser's request is closed at once, not left running to its end.
        await asyncio.to_thread(slow.wait_for_disconnects, 1)
        assert fast.disconnects == 0


async def test_a_first_candidate_answering_in_time_is_not_hedged(tmp_path: Path) -> None:
    async with fleet(tmp_path, scoring=HEDGE_AFTER) as f:
        assert served_by(await f.chat()) == "p1"
        assert f.received() == [1, 0]


async def test_the_hedge_header_false_turns_hedging_off(tmp_path: Path) -> None:
    async with fleet(tmp_path, scoring=HEDGE_AFTER) as f:
        f.providers[0].queue(Behavior.ok(delay_s=0.3))
        assert served_by(await f.chat(**{"x-best-hedge": "false"})) == "p1"
        assert f.received() == [1, 0]


@pytest.mark.slow  # hedges after the default wait of a pair without figures (1 s)
async def test_the_hedge_header_true_hedges_a_model_not_configured_for_it(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        f.providers[0].queue(Behavior.ok(delay_s=10))
        assert served_by(await f.chat(**{"x-best-hedge": "true"})) == "p2"
        await asyncio.to_thread(f.providers[0].wait_for_disconnects, 1)


# -- breakers --------------------------------------------------------------------------------


def breaker(threshold: int, open_s: float) -> dict[str, Any]:
    # A high min_attempts keeps the error-rate trip out of the way: only the streak counts.
    return {"breaker": {"failure_threshold": threshold, "open_s": open_s, "min_attempts": 1000}}


async def breaker_state(f: Fleet, provider: str) -> float | None:
    metrics = (await f.http.get("/metrics")).text
    prefix = f'best_breaker_state{{model="m",provider="{provider}"}} '
    values = [
        float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix)
    ]
    return values[0] if values else None


async def test_a_breaker_opens_after_failure_threshold_failures_in_a_row(tmp_path: Path) -> None:
    async with fleet(tmp_path, scoring=breaker(3, 60)) as f:
        f.providers[0].set_behavior(Behavior.server_error(500))
        for attempt in range(3):
            assert served_by(await f.chat()) == "p2"
            assert f.received()[0] == attempt + 1
        # Open: p1 is not tried any more.
        for _ in range(3):
            assert served_by(await f.chat()) == "p2"
        assert f.received() == [3, 6]


async def test_a_success_resets_the_streak(tmp_path: Path) -> None:
    async with fleet(tmp_path, scoring=breaker(3, 60)) as f:
        first = f.providers[0]
        for behaviors in ([Behavior.server_error(500)] * 2, [Behavior.ok()]):
            first.queue(*behaviors)
            for _ in behaviors:
                await f.chat()
        first.queue(Behavior.server_error(500), Behavior.server_error(500))
        await f.chat()
        await f.chat()
        # 2 + 1 + 2 failures, never 3 in a row: p1 is still tried.
        assert served_by(await f.chat()) == "p1"
        assert first.chat_requests == 6


async def test_an_open_breaker_half_opens_and_one_probe_closes_it(tmp_path: Path) -> None:
    open_s = 0.5
    async with fleet(tmp_path, scoring=breaker(2, open_s)) as f:
        first = f.providers[0]
        first.queue(Behavior.server_error(500), Behavior.server_error(500))
        await f.chat()
        await f.chat()
        assert served_by(await f.chat()) == "p2"
        assert first.chat_requests == 2
        await asyncio.sleep(open_s + 0.2)
        # Half-open: the probe goes to p1, succeeds and closes the breaker.
        assert served_by(await f.chat()) == "p1"
        assert served_by(await f.chat()) == "p1"
        assert first.chat_requests == 4


@pytest.mark.slow  # waits out the breaker twice
async def test_a_failed_probe_reopens_the_breaker_for_longer(tmp_path: Path) -> None:
    open_s = 0.5
    async with fleet(tmp_path, scoring=breaker(2, open_s)) as f:
        first = f.providers[0]
        first.set_behavior(Behavior.server_error(500))
        await f.chat()
        await f.chat()
        await asyncio.sleep(open_s + 0.2)
        assert served_by(await f.chat()) == "p2"  # the probe failed over
        assert first.chat_requests == 3
        # Reopened for twice open_s: after one open_s it is still open.
        await asyncio.sleep(open_s + 0.1)
        assert served_by(await f.chat()) == "p2"
        assert first.chat_requests == 3


async def test_only_one_probe_at_a_time_while_half_open(tmp_path: Path) -> None:
    open_s = 0.5
    async with fleet(tmp_path, scoring=breaker(2, open_s)) as f:
        first = f.providers[0]
        first.queue(Behavior.server_error(500), Behavior.server_error(500))
        await f.chat()
        await f.chat()
        await asyncio.sleep(open_s + 0.2)
        first.set_behavior(Behavior.held())
        probe = asyncio.create_task(f.chat())
        await asyncio.to_thread(first.wait_for_in_flight, 1)
        # While the probe is out, other requests go to p2 instead of piling onto p1.
        others = await asyncio.gather(*(f.chat() for _ in range(3)))
        assert [served_by(r) for r in others] == ["p2"] * 3
        first.set_behavior(Behavior.ok())
        first.release()
        assert served_by(await probe) == "p1"
        assert first.chat_requests == 3
