"""A fleet: one real Redis, three gateway replicas, real fake upstreams, all on loopback."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess, RedisServer, write_config

ADMIN = "admin-secret"
STATIC = "static-token"
# USD per million tokens; chat-model's completion cap is what a request without max_tokens
# reserves.  Exact in pico-USD, so tests can add up costs exactly.
PRICES = {
    "models": {"chat-model": {"input": 1.5, "output": 4.25, "max_output_tokens": 800}},
    "providers": {"backup": {"shared-model": {"input": 0.5, "output": 1.0}}},
}


@dataclass
class Fleet:
    redis: RedisServer
    replicas: list[GatewayProcess]
    primary: FakeProvider
    backup: FakeProvider

    def admin(self, replica: int = 0) -> httpx.Client:
        return httpx.Client(
            base_url=self.replicas[replica].url,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )

    def create_token(self, **limits: object) -> tuple[str, str]:
        with self.admin() as client:
            response = client.post("/admin/tokens", json={"name": "t", **limits})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], body["token"]

    def create_team(self, team_id: str, **limits: object) -> dict[str, object]:
        with self.admin() as client:
            response = client.post("/admin/teams", json={"name": team_id, "id": team_id, **limits})
        assert response.status_code == 201, response.text
        created: dict[str, object] = response.json()
        return created

    def urls(self) -> Iterator[str]:
        """Replica base URLs in round robin, like a load balancer."""
        return itertools.cycle([r.url for r in self.replicas])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    redis = RedisServer().start()
    primary = FakeProvider(["chat-model", "shared-model"], api_key="key-p").start()
    backup = FakeProvider(["shared-model"], api_key="key-b").start()
    config: Path = write_config(
        tmp_path_factory.mktemp("fleet-config"),
        [
            {
                "name": "primary",
                "api_key_env_var": "P_KEY",
                "base_url": primary.base_url,
                "base_priority": 2,
                "models": ["chat-model", "shared-model"],
            },
            {
                "name": "backup",
                "api_key_env_var": "B_KEY",
                "base_url": backup.base_url,
                "base_priority": 1,
                "models": ["shared-model"],
            },
        ],
    )
    (config / "prices.yaml").write_text(yaml.safe_dump(PRICES))
    env = {
        "REDIS_URL": redis.url,
        "P_KEY": "key-p",
        "B_KEY": "key-b",
        "ADMIN_TOKENS": ADMIN,
        "AUTH_TOKENS": STATIC,
        "LOG_LEVEL": "warning",
    }
    replicas = [GatewayProcess(config, env) for _ in range(3)]
    try:
        for replica in replicas:
            replica.start()
        yield Fleet(redis, replicas, primary, backup)
    finally:
        for replica in replicas:
            replica.stop()
        primary.stop()
        backup.stop()
        redis.close()
