"""Budgets follow ON_STORE_FAILURE while Redis is away, and the ledger loses nothing of it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.harness import GatewayProcess, RedisServer

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello budget"}]}
ADMIN = {"Authorization": "Bearer adm"}


def _post(gateway: GatewayProcess, token: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _ledger_requests(gateway: GatewayProcess, token_id: str) -> int:
    rows = httpx.get(
        f"{gateway.url}/admin/usage", params={"group_by": "token"}, headers=ADMIN
    ).json()["data"]
    return sum(r["requests"] for r in rows if r["token"] == token_id)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_budgets_follow_on_store_failure(single_provider_config: Path, mode: str) -> None:
    redis = RedisServer().start()
    env = {"P_KEY": "k", "REDIS_URL": redis.url, "ON_STORE_FAILURE": mode, "ADMIN_TOKENS": "adm"}
    try:
        with GatewayProcess(single_provider_config, env) as gateway:
            created = httpx.post(
                f"{gateway.url}/admin/tokens",
                json={"name": "b", "budget_usd": 1.0, "budget_period": "month"},
                headers=ADMIN,
            ).json()
            assert _post(gateway, created["token"]).status_code == 200
            assert _ledger_requests(gateway, created["id"]) == 1  # written (reading flushes)
            redis.stop()
            during = [_post(gateway, created["token"]) for _ in range(3)]
            if mode == "closed":
                assert {r.status_code for r in during} == {503}
                assert during[0].json()["error"]["code"] == "service_unavailable"
                assert during[0].headers["retry-after"] == "1"
            else:
                assert {r.status_code for r in during} == {200}
                assert all("x-best-budget-remaining-usd" in r.headers for r in during)
                # The ledger is not readable meanwhile: it waits for the shared store.
                usage = httpx.get(f"{gateway.url}/admin/usage", headers=ADMIN)
                assert usage.status_code == 503
            redis.start()  # empty: what was written before the outage is gone with it
            deadline = time.monotonic() + 15
            while httpx.get(f"{gateway.url}/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert _post(gateway, created["token"]).status_code == 200
            # The requests served during the outage were kept and written once Redis was back.
            served_during = 3 if mode == "open" else 0
            deadline = time.monotonic() + 5
            while _ledger_requests(gateway, created["id"]) != served_during + 1:
                assert time.monotonic() < deadline, _ledger_requests(gateway, created["id"])
                time.sleep(0.1)
    finally:
        redis.close()
