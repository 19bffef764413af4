"""Quotas hold exactly across three replicas sharing one Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis

from devkit.procs import eventually
from service.store.keys import Keys
from tests.fakes.upstream import Behavior
from tests.fleet.conftest import Fleet

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)

CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}


async def _burst(
    fleet: Fleet, token: str, n: int, body: dict[str, Any] = CHAT
) -> list[httpx.Response]:
    """n concurrent requests spread round-robin over the replicas."""
    urls = fleet.urls()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        return await asyncio.gather(
            *(
                client.post(f"{next(urls)}/v1/chat/completions", json=body, headers=headers)
                for _ in range(n)
            )
        )


def test_rpm_admits_exactly_the_limit_across_replicas(fleet: Fleet) -> None:
    _, token = fleet.create_token(rpm=10)
    responses = asyncio.run(_burst(fleet, token, 30))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60  # never longer than the window
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    admitted = next(r for r in responses if r.status_code == 200)
    assert admitted.headers["x-ratelimit-limit-requests"] == "10"


def test_rpm_exact_under_contention_every_round(fleet: Fleet) -> None:
    for limit in (1, 7, 17, 25):
        _, token = fleet.create_token(rpm=limit)
        responses = asyncio.run(_burst(fleet, token, 60))
        assert [r.status_code for r in responses].count(200) == limit


def test_max_concurrency_bounds_requests_in_flight_upstream(fleet: Fleet) -> None:
    fleet.primary.clear()
    fleet.primary.set_behavior(Behavior.held(), model="chat-model")
    token_id, token = fleet.create_token(max_concurrency=2)
    leases = Keys().quota(token_id, None).token_leases

    async def scenario() -> list[httpx.Response]:
        task = asyncio.ensure_future(_burst(fleet, token, 8))
        await asyncio.to_thread(fleet.primary.wait_for_in_flight, 2)
        # The other six were refused at admission while two were held upstream.
        await asyncio.sleep(0.5)
        assert fleet.primary.in_flight == 2
        with redis.Redis.from_url(fleet.redis.url) as conn:
            assert conn.zcount(leases, "-inf", "(+inf") == 2  # the held requests' leases
        fleet.primary.release()
        return await task

    try:
        responses = asyncio.run(scenario())
    finally:
        fleet.primary.clear_behaviors()
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 2, statuses
    assert statuses.count(429) == 6, statuses
    assert fleet.primary.max_in_flight == 2
    # Each lease is released when its settlement reaches Redis: inside the token's next
    # admission on the replica that held it, or on its own 25 ms after the answer.
    with redis.Redis.from_url(fleet.redis.url) as conn:
        eventually(lambda: conn.zcount(leases, "-inf", "(+inf") == 0, "the leases released")
    # Two more fit again.
    again = asyncio.run(_burst(fleet, token, 2))
    assert [r.status_code for r in again] == [200, 200]


def test_tpm_budget_is_never_overspent(fleet: Fleet) -> None:
    _, token = fleet.create_token(tpm=1000)
    body = {**CHAT, "max_tokens": 100}
    fleet.primary.clear()
    fleet.primary.set_behavior(Behavior.held(), model="chat-model")

    async def scenario() -> tuple[int, list[httpx.Response]]:
        # Hold admitted requests upstream so no settlement frees budget mid-burst.
        task = asyncio.ensure_future(_burst(fleet, token, 30, body))
        await asyncio.to_thread(fleet.primary.wait_until, lambda: fleet.primary.in_flight > 0)
        await asyncio.sleep(0.5)
        held = fleet.primary.in_flight
        fleet.primary.release()
        return held, await task

    try:
        held, responses = asyncio.run(scenario())
    finally:
        fleet.primary.clear_behaviors()
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    # Each request reserves its prompt estimate + max_tokens (> 100): at most 9 fit in 1000.
    assert 1 <= held <= 9
    assert len(admitted) == held and len(refused) == 30 - held
    assert sum(r.json()["usage"]["total_tokens"] for r in admitted) <= 1000
    assert refused[0].headers["x-ratelimit-limit-tokens"] == "1000"
    # Settlement gave back what was reserved but not used: requests fit again.
    after = asyncio.run(_burst(fleet, token, 3, {**CHAT, "max_tokens": 5}))
    assert [r.status_code for r in after] == [200, 200, 200]


def test_revocation_is_refused_by_every_replica_within_a_second(fleet: Fleet) -> None:
    token_id, token = fleet.create_token()
    assert all(r.status_code == 200 for r in asyncio.run(_burst(fleet, token, 3)))
    with fleet.admin(replica=1) as admin:
        assert admin.delete(f"/admin/tokens/{token_id}").status_code == 200
    revoked_at = time.monotonic()
    responses = asyncio.run(_burst(fleet, token, 3))
    assert time.monotonic() - revoked_at < 1.0
    assert [r.status_code for r in responses] == [401, 401, 401]
    assert responses[0].headers["www-authenticate"] == "Bearer"


def test_static_token_limits_can_change_and_it_can_be_revoked(fleet: Fleet) -> None:
    from service.quotas.tokens import token_id
    from tests.fleet.conftest import STATIC

    static_id = token_id(STATIC)
    with fleet.admin(replica=2) as admin:
        listed = admin.get("/admin/tokens").json()["data"]
        assert any(t["id"] == static_id and t["kind"] == "static" for t in listed)
        assert admin.patch(f"/admin/tokens/{static_id}", json={"rpm": 2}).status_code == 200
    statuses = [r.status_code for r in asyncio.run(_burst(fleet, STATIC, 6))]
    assert statuses.count(200) == 2
    with fleet.admin() as admin:
        assert admin.delete(f"/admin/tokens/{static_id}").status_code == 200
    assert {r.status_code for r in asyncio.run(_burst(fleet, STATIC, 3))} == {401}


def test_cooldown_caused_on_one_replica_is_respected_by_the_others(fleet: Fleet) -> None:
    _, token = fleet.create_token()
    headers = {"Authorization": f"Bearer {token}"}
    body = {**CHAT, "model": "shared-model"}
    fleet.primary.clear()
    fleet.primary.queue(Behavior.rate_limited(retry_after=30), model="shared-model")
    first = httpx.post(f"{fleet.replicas[0].url}/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == 200
    assert first.headers["x-best-provider"] == "backup"
    calls_to_primary = fleet.primary.chat_requests
    for replica in fleet.replicas[1:]:
        r = httpx.post(f"{replica.url}/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200
        assert r.headers["x-best-provider"] == "backup"
    assert fleet.primary.chat_requests == calls_to_primary
    stats = httpx.get(f"{fleet.replicas[2].url}/stats", headers=headers).json()
    cooling = [p for p in stats["providers"] if p["provider"] == "primary"]
    assert cooling and all(p["cooldown_remaining_s"] > 20 for p in cooling)
