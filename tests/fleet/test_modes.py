"""Store-failure policy, multi-worker metrics and streaming settlement."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import GatewayProcess, RedisServer

pytestmark = pytest.mark.slow  # every test here runs gateway processes (and Redis servers)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def _post(gateway: GatewayProcess, token: str, body: dict[str, object] = CHAT) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_closed_mode_refuses_quota_checked_requests_while_redis_is_down(
    single_provider_config: Path,
) -> None:
    redis = RedisServer().start()
    env = {
        "P_KEY": "k",
        "REDIS_URL": redis.url,
        "AUTH_TOKENS": "limited,unlimited",
        "ON_STORE_FAILURE": "closed",
        "ADMIN_TOKENS": "adm",
    }
    try:
        with GatewayProcess(single_provider_config, env) as gateway:
            from service.quotas.tokens import token_id

            patch = httpx.patch(
                f"{gateway.url}/admin/tokens/{token_id('limited')}",
                json={"rpm": 100},
                headers={"Authorization": "Bearer adm"},
            )
            assert patch.status_code == 200
            assert _post(gateway, "limited").status_code == 200
            redis.stop()
            refused = _post(gateway, "limited")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "service_unavailable"
            # A token without limits needs no quota check and is still served.
            assert _post(gateway, "unlimited").status_code == 200
            redis.start()
            deadline = time.monotonic() + 15
            while httpx.get(f"{gateway.url}/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert _post(gateway, "limited").status_code == 200
    finally:
        redis.close()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_every_worker(
    single_provider_config: Path, redis_server: RedisServer
) -> None:
    env = {
        "P_KEY": "k",
        "REDIS_URL": redis_server.url,
        "WEB_CONCURRENCY": "2",
        "AUTH_TOKENS": "t",
        "REDIS_PREFIX": "workers",
    }
    with GatewayProcess(single_provider_config, env) as gateway:
        with httpx.Client(timeout=10) as client:
            for _ in range(40):  # new connections: the kernel spreads them over the workers
                r = client.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": "Bearer t", "Connection": "close"},
                )
                assert r.status_code == 200
        text = httpx.get(f"{gateway.url}/metrics").text
    assert _metric(text, "best_requests_total", route="chat", status="200") == 40
    pids = set(re.findall(r'pid="(\d+)"', text))
    assert len(pids) <= 2  # per-pid series only for live gauges, never unbounded


def test_streaming_usage_settles_the_tpm_reservation(single_provider_config: Path) -> None:
    env = {"P_KEY": "k", "ADMIN_TOKENS": "adm"}
    with GatewayProcess(single_provider_config, env) as gateway:
        created = httpx.post(
            f"{gateway.url}/admin/tokens",
            json={"name": "s", "tpm": 300},
            headers={"Authorization": "Bearer adm"},
        ).json()
        body = {**CHAT, "stream": True, "max_tokens": 200}
        # Reserves ~200 of 300; after settlement with the real (small) usage, a second fits.
        for _ in range(3):
            with httpx.stream(
                "POST",
                f"{gateway.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {created['token']}"},
            ) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            time.sleep(0.2)  # settlement runs after the response
        listed = httpx.get(
            f"{gateway.url}/admin/tokens", headers={"Authorization": "Bearer adm"}
        ).json()["data"]
        used = next(t for t in listed if t["id"] == created["id"])["usage"]["tokens_last_minute"]
        assert 0 < used < 100
