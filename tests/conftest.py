from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeProvider
from tests.harness import RedisServer, write_config
from tests.topologies import (  # noqa: F401  (fixtures, shared by every test folder)
    disposable_redis_cluster,
    redis_cluster,
    redis_sentinel_group,
    tls_redis,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of the test session's own (flush it between uses if needed)."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def single_provider() -> Iterator[FakeProvider]:
    """One fake provider serving model ``m``; it expects the key ``k``."""
    with FakeProvider(["m"], api_key="k") as provider:
        yield provider


@pytest.fixture(scope="module")
def single_provider_config(
    single_provider: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A CONFIG_DIR routing model ``m`` to ``single_provider`` (provider ``p``, key in P_KEY)."""
    return write_config(
        tmp_path_factory.mktemp("single-provider"),
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": single_provider.base_url,
                "base_priority": 1,
                "models": ["m"],
            }
        ],
    )
