"""Every store test runs twice: on the embedded store (fakeredis + Lua) and on a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from service.observability.metrics import create_metrics
from service.store.client import Store

T = TypeVar("T")


@pytest.fixture(params=["embedded", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the embedded store, else the URL of the session's real Redis."""
    if request.param == "embedded":
        return None
    server = request.getfixturevalue("redis_server")
    url: str = server.url
    return url


StoreRunner = Callable[..., Any]


def new_store(url: str | None, *, refuse_quotas_when_degraded: bool = False) -> Store:
    # A prefix of its own per store: tests share one Redis server without interfering.
    return Store(
        url=url,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        refuse_quotas_when_degraded=refuse_quotas_when_degraded,
        metrics=create_metrics(),
    )


def run_with_store(
    url: str | None,
    body: Callable[[Store], Awaitable[T]],
    *,
    refuse_quotas_when_degraded: bool = False,
) -> T:
    """Run ``body(store)`` on a started store in a fresh event loop; always close it."""

    async def main() -> T:
        store = new_store(url, refuse_quotas_when_degraded=refuse_quotas_when_degraded)
        await store.start()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture
def run_store(store_url: str | None) -> StoreRunner:
    """``run_store(body)`` runs ``async body(store)`` against the backend under test."""

    def run(body: Callable[[Store], Awaitable[T]]) -> T:
        return run_with_store(store_url, body)

    return run
