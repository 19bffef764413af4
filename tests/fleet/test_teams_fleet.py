"""Team limits hold exactly across three replicas sharing one Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.fleet.conftest import Fleet

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)

CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}


async def _mixed_burst(fleet: Fleet, tokens: list[str], n: int) -> list[httpx.Response]:
    """n concurrent requests, alternating tokens, spread round-robin over the replicas."""
    urls = fleet.urls()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{next(urls)}/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"},
                )
                for i in range(n)
            )
        )


def test_team_rpm_shared_by_two_tokens_admits_exactly_its_limit(fleet: Fleet) -> None:
    fleet.create_team("fleet-rpm", rpm=12)
    # Each token alone would allow more than the team does.
    _, first = fleet.create_token(team="fleet-rpm", rpm=10)
    _, second = fleet.create_token(team="fleet-rpm")
    responses = asyncio.run(_mixed_burst(fleet, [first, second], 48))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 12, statuses
    assert statuses.count(429) == 36, statuses
    per_token = [
        sum(1 for i, r in enumerate(responses) if r.status_code == 200 and i % 2 == side)
        for side in (0, 1)
    ]
    assert sum(per_token) == 12 and per_token[0] <= 10
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_team_change_reaches_every_replica_within_a_second(fleet: Fleet) -> None:
    fleet.create_team("fleet-late")
    _, token = fleet.create_token(team="fleet-late")
    assert all(r.status_code == 200 for r in asyncio.run(_mixed_burst(fleet, [token], 3)))
    with fleet.admin(replica=2) as admin:
        assert admin.patch("/admin/teams/fleet-late", json={"rpm": 1}).status_code == 200
    # Replica 0 and 1 learn of the change through pub/sub (or the 1 s poll).
    deadline = asyncio.run(_wait_for_refusal(fleet, token))
    assert deadline < 1.5


async def _wait_for_refusal(fleet: Fleet, token: str) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 5:
        statuses = [r.status_code for r in await _mixed_burst(fleet, [token], 3)]
        if statuses.count(429) >= 2:
            return loop.time() - started
        await asyncio.sleep(0.05)
    return loop.time() - started
