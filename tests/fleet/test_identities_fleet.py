"""Identities across three replicas sharing one Redis: an identity's rpm and a team's limits
are exact fleet-wide, and a block reaches every replica within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from service.identities.identities import identity_id
from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess, RedisServer, write_config
from tests.identities.issuer import ISSUER, JwksServer, Key, claims, issuer_entry, sign, write_auth

pytestmark = pytest.mark.slow

ADMIN = "admin-secret"
CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}
IDENTITY_RPM = 10


@dataclass
class IdentityFleet:
    replicas: list[GatewayProcess]
    key: Key

    def admin(self, replica: int = 0) -> httpx.Client:
        return httpx.Client(
            base_url=self.replicas[replica].url,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )

    def token(self, sub: str, **extra: object) -> str:
        return sign(self.key, claims(sub, **extra))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityFleet]:
    key = Key("fleet-1")
    jwks = JwksServer([key]).start()
    redis = RedisServer().start()
    provider = FakeProvider(["chat-model"], api_key="key-p").start()
    config = write_config(
        tmp_path_factory.mktemp("identities-fleet"),
        [
            {
                "name": "primary",
                "api_key_env_var": "P_KEY",
                "base_url": provider.base_url,
                "base_priority": 1,
                "models": ["chat-model"],
            }
        ],
    )
    write_auth(config, issuer_entry(jwks.url, team_claim="team", limits={"rpm": IDENTITY_RPM}))
    env = {
        "REDIS_URL": redis.url,
        "P_KEY": "key-p",
        "ADMIN_TOKENS": ADMIN,
        "AUTH_TOKENS": "static-token",
        "LOG_LEVEL": "debug",
    }
    replicas = [GatewayProcess(config, env) for _ in range(3)]
    try:
        for replica in replicas:
            replica.start()
        yield IdentityFleet(replicas, key)
    finally:
        for replica in replicas:
            replica.stop()
        provider.stop()
        redis.close()
        jwks.stop()


async def _burst(fleet: IdentityFleet, tokens: list[str], n: int) -> list[httpx.Response]:
    """n concurrent requests, alternating tokens, round-robin over the replicas."""
    urls = [r.url for r in fleet.replicas]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"},
                )
                for i in range(n)
            )
        )


def test_an_identitys_rpm_is_exact_across_replicas(fleet: IdentityFleet) -> None:
    token = fleet.token("ivan")
    statuses = [r.status_code for r in asyncio.run(_burst(fleet, [token], 4 * IDENTITY_RPM))]
    assert statuses.count(200) == IDENTITY_RPM, statuses
    assert statuses.count(429) == 3 * IDENTITY_RPM, statuses


def test_a_teams_limits_are_shared_by_two_subjects(fleet: IdentityFleet) -> None:
    with fleet.admin() as admin:
        response = admin.post("/admin/teams", json={"id": "ml", "name": "ml", "rpm": 12})
        assert response.status_code == 201, response.text
    first, second = fleet.token("judy", team="ml"), fleet.token("ken", team="ml")
    responses = asyncio.run(_burst(fleet, [first, second], 48))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 12, statuses
    per_subject = [
        sum(1 for i, r in enumerate(responses) if r.status_code == 200 and i % 2 == side)
        for side in (0, 1)
    ]
    # Each subject alone may make 10: the team's 12 is what held.
    assert all(count <= IDENTITY_RPM for count in per_subject) and sum(per_subject) == 12
    unknown = asyncio.run(_burst(fleet, [fleet.token("leo", team="nobody")], 3))
    assert [r.status_code for r in unknown] == [403, 403, 403]


def test_a_block_takes_effect_on_every_replica_within_a_second(fleet: IdentityFleet) -> None:
    token = fleet.token("mallory")
    assert [r.status_code for r in asyncio.run(_burst(fleet, [token], 3))] == [200] * 3
    identity = identity_id(ISSUER, "mallory")
    with fleet.admin() as admin:
        listed = {t["id"]: t for t in admin.get("/admin/tokens").json()["data"]}
    assert listed[identity]["name"] == "corp:mallory"
    assert listed[identity]["usage"]["requests_last_minute"] == 3
    with fleet.admin(replica=2) as admin:
        assert admin.delete(f"/admin/tokens/{identity}").status_code == 200
    blocked_at = time.monotonic()
    waits = asyncio.run(_until_refused(fleet, token, blocked_at))
    assert all(wait < 1.0 for wait in waits), waits


async def _until_refused(fleet: IdentityFleet, token: str, since: float) -> list[float]:
    """How long after ``since`` each replica first refused ``token`` (401)."""

    async def one(client: httpx.AsyncClient, url: str) -> float:
        while time.monotonic() - since < 5:
            response = await client.post(
                f"{url}/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code == 401:
                return time.monotonic() - since
            await asyncio.sleep(0.02)
        return 5.0

    async with httpx.AsyncClient(timeout=10) as client:
        return list(await asyncio.gather(*(one(client, r.url) for r in fleet.replicas)))


def test_no_replica_logs_a_raw_token(fleet: IdentityFleet) -> None:
    token = fleet.token("nina")
    forged = sign(Key("fleet-1"), claims("nina"))  # right kid, wrong key
    statuses = [r.status_code for r in asyncio.run(_burst(fleet, [token, forged], 6))]
    assert statuses == [200, 401] * 3
    with fleet.admin() as admin:
        metrics = admin.get("/metrics").text
    logs = "".join(r.logs() for r in fleet.replicas)
    assert "auth.yaml" in logs or "issuer corp" in logs  # debug logs were written
    for raw in (token, forged):
        for part in raw.split("."):
            assert part not in logs and part not in metrics
