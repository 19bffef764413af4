"""The response cache's tests run the gateway in process against a scripted upstream, on each
store backend: embedded, a real redis-server and a real 3-master Cluster on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import App
from tests.cache.upstream import ScriptedUpstream
from tests.harness import write_config
from tests.inprocess import inprocess_settings, running_app

# USD per million tokens, for every model: a miss costs, a hit does not.
PRICES = {"default": {"input": 1.0, "output": 2.0}}

Gateway = Callable[..., AbstractAsyncContextManager[App]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["embedded", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "embedded":
        return None
    server = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    url: str = server.url
    return url


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    scripted = await ScriptedUpstream().start()
    try:
        yield scripted
    finally:
        await scripted.close()


@pytest.fixture
def gateway(upstream: ScriptedUpstream, tmp_path: Path, store_url: str | None) -> Gateway:
    """``async with gateway(**settings) as app``: a started gateway on the store under test
    (a key prefix of its own), routing model ``m`` to the scripted upstream."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[App]:
        config = write_config(
            tmp_path / f"config-{uuid.uuid4().hex[:6]}",
            [
                {
                    "name": "p",
                    "api_key_env_var": "P_KEY",
                    "base_url": upstream.base_url,
                    "base_priority": 1,
                    "models": ["m"],
                    "apis": ["chat", "embeddings", "completions"],
                }
            ],
        )
        (config / "prices.yaml").write_text(yaml.safe_dump(PRICES))
        settings = inprocess_settings(
            config,
            tmp_path / f"data-{uuid.uuid4().hex[:6]}",
            redis_url=store_url,
            redis_prefix=f"cache-{uuid.uuid4().hex[:10]}",
            env={"P_KEY": "k"},
            **overrides,
        )
        async with running_app(settings) as app:
            yield app

    return start
