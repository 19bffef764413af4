"""Every contract test runs once per backend: the in-process memory backend, a real
redis-server, and a real 3-master Redis Cluster on loopback."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from service.store.backend import Backend
from service.store.connection import parse_redis_url
from service.store.keys import Keys
from service.store.memory import MemoryBackend
from service.store.redis_backend import RedisBackend

T = TypeVar("T")
BackendRunner = Callable[..., Any]


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def run_backend(backend_kind: str, request: pytest.FixtureRequest) -> BackendRunner:
    """``run_backend(body)`` runs ``async body(backend, keys)`` in a fresh event loop against
    the backend under test; each call gets a key prefix of its own."""
    url = {
        "memory": None,
        "redis": lambda: request.getfixturevalue("redis_server").url,
        "cluster": lambda: request.getfixturevalue("redis_cluster").url,
    }[backend_kind]
    url = url() if url is not None else None

    def run(body: Callable[[Backend, Keys], Awaitable[T]]) -> T:
        async def main() -> T:
            keys = Keys(f"test-{uuid.uuid4().hex[:12]}")
            backend: Backend = (
                MemoryBackend() if url is None else RedisBackend(parse_redis_url(url), keys)
            )
            await backend.ping()  # connects (and tells a Cluster)
            try:
                return await body(backend, keys)
            finally:
                await backend.close()

        return asyncio.run(main())

    return run
