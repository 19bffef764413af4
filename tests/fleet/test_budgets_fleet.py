"""Spend budgets and the usage ledger across three replicas sharing one Redis.

Prices (tests/fleet/conftest.py): chat-model 1.5 USD in / 4.25 USD out per million tokens,
backup's shared-model 0.5 / 1.0, primary's shared-model unpriced.  Every figure is exact: the
gateway counts pico-USD, budgets micro-USD (each request rounded up).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.fakes.openai_payloads import chat_usage
from tests.fleet.conftest import Fleet

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)

PICO = 10**12
PRICE = {  # pico-USD per token: (input, output)
    ("primary", "chat-model"): (1_500_000, 4_250_000),
    ("backup", "shared-model"): (500_000, 1_000_000),
}


def _chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "chat-model", "messages": [{"role": "user", "content": content}], **extra}


def _raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def worst_case_micro(body: dict[str, Any], completion_cap: int) -> int:
    """What the gateway reserves for ``body`` on chat-model (prices.py, limits.py)."""
    prompt = len(_raw(body)) // 4 + 1
    pico = prompt * 1_500_000 + completion_cap * 4_250_000
    return -(-pico // 10**6)


def cost_pico(provider: str, model: str, body: dict[str, Any]) -> int:
    usage = chat_usage(body)
    price_in, price_out = PRICE[(provider, model)]
    return usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out


async def _post(
    client: httpx.AsyncClient, url: str, token: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        f"{url}/v1/chat/completions",
        content=_raw(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


async def _burst(fleet: Fleet, tokens: list[str], n: int, body: dict[str, Any]) -> list[Any]:
    urls = fleet.urls()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        return await asyncio.gather(
            *(_post(client, next(urls), tokens[i % len(tokens)], body) for i in range(n))
        )


def _drain(fleet: Fleet, tokens: list[str], body: dict[str, Any]) -> tuple[int, httpx.Response]:
    """Send requests one by one until the budget refuses for its period; returns how many
    were admitted and the final refusal.  A refusal while others' settlements are still on
    their way (Retry-After 1) is retried."""

    async def run() -> tuple[int, httpx.Response]:
        urls = fleet.urls()
        admitted = 0
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(50):
                response = await _post(client, next(urls), tokens[i % len(tokens)], body)
                if response.status_code == 200:
                    admitted += 1
                elif int(response.headers.get("retry-after", "0")) > 1 or "retry-after" not in (
                    response.headers
                ):
                    return admitted, response
                else:
                    await asyncio.sleep(0.1)
        raise AssertionError("the budget never refused")

    return asyncio.run(run())


def _spent_micro(fleet: Fleet, path: str, record_id: str) -> tuple[int, int]:
    """(settled spend, reserved) in micro-USD of a token's or team's budget, once nothing is
    in flight (settlements travel within ~25 ms of the answer)."""
    deadline = time.monotonic() + 5
    while True:
        with fleet.admin(replica=2) as admin:
            rows = admin.get(path).json()["data"]
        row = next(r for r in rows if r["id"] == record_id)
        usage = row.get("usage", row)
        spent = round(usage["budget_spent_usd"] * 10**6)
        reserved = round(usage["budget_reserved_usd"] * 10**6)
        if reserved == 0 or time.monotonic() > deadline:
            return spent, reserved
        time.sleep(0.05)


def _seconds_until(end: datetime) -> float:
    return (end - datetime.now(UTC)).total_seconds()


def _next_midnight() -> datetime:
    today = datetime.now(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)


def _next_month() -> datetime:
    now = datetime.now(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def test_token_budget_holds_under_40_concurrent_requests(fleet: Fleet) -> None:
    body = _chat("spend some money", max_tokens=100)
    worst = worst_case_micro(body, 100)
    budget = 10 * worst + worst // 2  # room for ten and a half worst cases
    charged = worst * 9 // 10  # the provider reports 90% of the worst case
    token_id, token = fleet.create_token(budget_usd=budget / 10**6, budget_period="day")
    fleet.primary.report_cost(charged / 10**6)
    try:
        responses = asyncio.run(_burst(fleet, [token], 40, body))
        statuses = [r.status_code for r in responses]
        admitted = statuses.count(200)
        refused = [r for r in responses if r.status_code == 429]
        assert admitted + len(refused) == 40, statuses
        # Reservations: ten worst cases fit at once, at most eleven once some settled.
        assert 10 <= admitted <= 11, statuses
        error = refused[0].json()["error"]
        assert error["type"] == error["code"] == "insufficient_quota"
        assert all("x-best-budget-remaining-usd" in r.headers for r in responses)
        more, final = _drain(fleet, [token], body)
    finally:
        fleet.primary.report_cost(None)
    spent, reserved = _spent_micro(fleet, "/admin/tokens", token_id)
    total = admitted + more
    print(
        f"\ntoken budget {budget} micro-USD, worst case {worst}, charged {charged} each: "
        f"burst admitted {admitted}/40, then {more} more; settled {spent} "
        f"(= {total} x {charged}), over by {max(0, spent - budget)}"
    )
    assert reserved == 0
    assert spent == total * charged <= budget
    # As many as the budget could cover: each admission needs its worst case free.
    assert total == 1 + (budget - worst) // charged
    assert spent + worst > budget
    # Spent for the day: 429 until the next UTC midnight.
    assert final.json()["error"]["code"] == "insufficient_quota"
    assert abs(int(final.headers["retry-after"]) - _seconds_until(_next_midnight())) <= 2
    remaining = float(final.headers["x-best-budget-remaining-usd"])
    assert round(remaining * 10**6) == budget - spent


def test_team_budget_shared_by_two_tokens_holds(fleet: Fleet) -> None:
    body = _chat("team spend", max_tokens=60)
    worst = worst_case_micro(body, 60)
    budget = 10 * worst + worst // 2
    charged = worst * 9 // 10
    fleet.create_team("budgeted", budget_usd=budget / 10**6, budget_period="month")
    _, first = fleet.create_token(team="budgeted")
    _, second = fleet.create_token(team="budgeted", budget_usd=1.0, budget_period="total")
    fleet.primary.report_cost(charged / 10**6)
    try:
        responses = asyncio.run(_burst(fleet, [first, second], 40, body))
        statuses = [r.status_code for r in responses]
        admitted = statuses.count(200)
        assert 10 <= admitted <= 11 and statuses.count(429) == 40 - admitted, statuses
        refusal = next(r for r in responses if r.status_code == 429).json()["error"]
        assert refusal["code"] == "insufficient_quota" and "team" in refusal["message"]
        more, final = _drain(fleet, [first, second], body)
    finally:
        fleet.primary.report_cost(None)
    spent, reserved = _spent_micro(fleet, "/admin/teams", "budgeted")
    total = admitted + more
    print(
        f"\nteam budget {budget} micro-USD, worst case {worst}, charged {charged} each, two "
        f"tokens: burst admitted {admitted}/40, then {more} more; settled {spent}, "
        f"over by {max(0, spent - budget)}"
    )
    assert reserved == 0 and spent == total * charged <= budget
    assert total == 1 + (budget - worst) // charged
    assert abs(int(final.headers["retry-after"]) - _seconds_until(_next_month())) <= 2


def test_streams_are_charged_from_the_stream_usage(fleet: Fleet) -> None:
    token_id, token = fleet.create_token(budget_usd=5.0, budget_period="week")
    bodies = [_chat(f"stream number {i} " + "word " * i, stream=True) for i in range(6)]

    async def run() -> list[bytes]:
        urls = fleet.urls()
        out = []
        async with httpx.AsyncClient(timeout=30) as client:
            for body in bodies:
                response = await _post(client, next(urls), token, body)
                assert response.status_code == 200
                assert "x-best-budget-remaining-usd" in response.headers
                out.append(response.content)
        return out

    streams = asyncio.run(run())
    # The client did not ask for usage: the gateway asked for it and kept it to itself.
    assert all(b"prompt_tokens" not in s and s.endswith(b"data: [DONE]\n\n") for s in streams)
    expected = [cost_pico("primary", "chat-model", b) for b in bodies]
    spent, reserved = _spent_micro(fleet, "/admin/tokens", token_id)
    assert reserved == 0
    assert spent == sum(-(-c // 10**6) for c in expected)
    ledger = _ledger_row(fleet, "token", token_id, len(bodies))
    assert round(ledger["cost_usd"] * PICO) == sum(expected)
    assert ledger["completion_tokens"] == sum(chat_usage(b)["completion_tokens"] for b in bodies)


def _ledger_row(fleet: Fleet, group_by: str, key: str, requests: int) -> dict[str, Any]:
    """The ledger row of ``key`` once every replica has flushed ``requests`` into it."""
    deadline = time.monotonic() + 5
    while True:
        with fleet.admin(replica=1) as admin:
            response = admin.get("/admin/usage", params={"group_by": group_by})
        assert response.status_code == 200, response.text
        row = next((r for r in response.json()["data"] if r[group_by] == key), None)
        if (row is not None and row["requests"] >= requests) or time.monotonic() > deadline:
            assert row is not None
            return row
        time.sleep(0.1)


def test_the_ledger_equals_reported_usage_times_price_exactly(fleet: Fleet) -> None:
    fleet.create_team("ledger-team")
    team_token_id, team_token = fleet.create_token(team="ledger-team")
    solo_id, solo = fleet.create_token()
    requests = [
        (team_token, "chat-model", _chat("alpha beta gamma")),
        (team_token, "chat-model", _chat("a much longer prompt " * 5, stream=True)),
        (
            solo,
            "backup/shared-model",
            {**_chat("routed to backup"), "model": "backup/shared-model"},
        ),
        (solo, "chat-model", _chat("one two three four five six", stream=True)),
        (solo, "primary/shared-model", {**_chat("no price here"), "model": "primary/shared-model"}),
    ] * 3

    async def run() -> None:
        urls = fleet.urls()
        async with httpx.AsyncClient(timeout=30) as client:
            for token, _, body in requests:
                response = await _post(client, next(urls), token, body)
                assert response.status_code == 200, response.text

    asyncio.run(run())
    expected: dict[str, int] = {team_token_id: 0, solo_id: 0}
    unpriced = 0
    for token, model, body in requests:
        pair = ("backup", "shared-model") if model.startswith("backup/") else ("primary", model)
        if pair == ("primary", "primary/shared-model"):
            unpriced += 1
            continue
        expected[team_token_id if token == team_token else solo_id] += cost_pico(
            *pair, {**body, "model": pair[1]}
        )
    team_row = _ledger_row(fleet, "token", team_token_id, 6)
    solo_row = _ledger_row(fleet, "token", solo_id, 9)
    print(
        f"\nledger: team token {team_row['cost_usd']:.12f} USD (expected "
        f"{expected[team_token_id] / PICO:.12f}), solo {solo_row['cost_usd']:.12f} USD "
        f"(expected {expected[solo_id] / PICO:.12f}), unpriced {solo_row['unpriced_requests']}"
    )
    assert team_row["requests"] == 6 and solo_row["requests"] == 9
    assert round(team_row["cost_usd"] * PICO) == expected[team_token_id]
    assert round(solo_row["cost_usd"] * PICO) == expected[solo_id]
    assert solo_row["unpriced_requests"] == unpriced == 3
    team = _ledger_row(fleet, "team", "ledger-team", 6)
    assert round(team["cost_usd"] * PICO) == expected[team_token_id]
    # The same spend in /metrics, summed over the replicas' counters.
    total = 0.0
    for replica in fleet.replicas:
        for line in httpx.get(f"{replica.url}/metrics").text.splitlines():
            if line.startswith("best_spend_usd_total{") and 'team="ledger-team"' in line:
                total += float(line.rsplit(" ", 1)[1])
    assert math.isclose(total, expected[team_token_id] / PICO, rel_tol=1e-9)
