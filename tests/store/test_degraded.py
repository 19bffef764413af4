"""A shared Redis that is down: the store answers from its local copy and says so, quotas
follow ON_STORE_FAILURE, and it goes back to Redis on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.observability.metrics import Metrics, create_metrics
from service.store.client import ADMITTED, OVER_RPM, QUOTA_UNAVAILABLE, UNKNOWN, Store
from tests.harness import RedisServer, free_port

T = TypeVar("T")


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def with_degraded_store(
    url: str, body: Callable[[Store, Metrics], Awaitable[T]], *, refuse: bool = False
) -> T:
    async def main() -> T:
        metrics = create_metrics()
        store = Store(
            url=url, prefix="degraded", refuse_quotas_when_degraded=refuse, metrics=metrics
        )
        await store.start()
        try:
            return await body(store, metrics)
        finally:
            await store.close()

    return asyncio.run(main())


def degraded_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("best_store_degraded")


LIMITED = {
    "id": "limited",
    "revoked": "0",
    "expires_ms": "",
    "rpm": "2",
    "tpm": "",
    "max_concurrency": "",
}
UNLIMITED = {
    "id": "free",
    "revoked": "0",
    "expires_ms": "",
    "rpm": "",
    "tpm": "",
    "max_concurrency": "",
}


def test_unreachable_redis_at_start_serves_from_local_state() -> None:
    async def body(store: Store, metrics: Metrics) -> None:
        assert store.shared
        assert store.degraded
        assert not await store.ping()
        assert degraded_gauge(metrics) == 1.0
        result = await store.admit(None, "r1", 0, 60_000)
        assert result.status == ADMITTED
        assert result.state("p|groq") == 0 and result.cooling == {}
        # Cooldowns go on locally.
        until, _ = await store.cool(
            "p|groq",
            retry_after_ms=30_000,
            fixed_ms=-1,
            base_ms=10_000,
            cap_ms=300_000,
            floor_ms=1_000,
            ceiling_ms=3_600_000,
        )
        result = await store.admit(None, "r2", 0, 60_000)
        assert result.cooling == {"p|groq": until}

    with_degraded_store(dead_url(), body)


def test_open_mode_counts_quotas_locally() -> None:
    async def body(store: Store, metrics: Metrics) -> None:
        await store.put_local_tokens([LIMITED])
        statuses = [(await store.admit("limited", f"r{i}", 0, 60_000)).status for i in range(3)]
        assert statuses == [ADMITTED, ADMITTED, OVER_RPM]

    with_degraded_store(dead_url(), body, refuse=False)


def test_closed_mode_refuses_tokens_with_limits() -> None:
    async def body(store: Store, metrics: Metrics) -> None:
        await store.put_local_tokens([LIMITED, UNLIMITED])
        refused = await store.admit("limited", "r1", 0, 60_000)
        assert refused.status == QUOTA_UNAVAILABLE
        assert refused.retry_after_ms > 0
        # Tokens without limits need no shared counting, and auth still works locally.
        assert (await store.admit("free", "r2", 0, 60_000)).status == ADMITTED
        assert (await store.admit("stranger", "r3", 0, 60_000)).status == UNKNOWN

    with_degraded_store(dead_url(), body, refuse=True)


def test_redis_lost_and_back_without_restart() -> None:
    server = RedisServer().start()
    try:

        async def body(store: Store, metrics: Metrics) -> None:
            degraded = asyncio.Event()
            recovered = asyncio.Event()

            async def on_degrade() -> None:
                degraded.set()

            async def on_recover() -> None:
                recovered.set()

            store.on_degrade(on_degrade)
            store.on_recover(on_recover)
            assert not store.degraded
            await store.put_token("limited", LIMITED, create=False)
            assert (await store.admit("limited", "r1", 0, 60_000)).status == ADMITTED

            server.stop()
            started = time.monotonic()
            result = await store.admit(None, "r2", 0, 60_000)
            assert result.status == ADMITTED
            assert time.monotonic() - started < 5  # failed over, did not hang
            assert degraded.is_set() and store.degraded
            assert degraded_gauge(metrics) == 1.0
            errors = metrics.registry.get_sample_value("best_store_errors_total", {"op": "admit"})
            assert errors == 1.0

            server.start()
            await asyncio.wait_for(recovered.wait(), timeout=5)
            assert not store.degraded
            assert degraded_gauge(metrics) == 0.0
            assert await store.ping()
            # Back on the shared Redis (a fresh one: this server keeps nothing on disk), where
            # another replica sees what this one counts.
            await store.put_token("limited", LIMITED, create=False)
            assert (await store.admit("limited", "r3", 0, 60_000)).status == ADMITTED
            other = Store(
                url=server.url,
                prefix="degraded",
                refuse_quotas_when_degraded=False,
                metrics=create_metrics(),
            )
            await other.start()
            try:
                assert (await other.token_usage("limited"))[0] == 1
                assert (await other.admit("limited", "r4", 0, 60_000)).status == ADMITTED
                assert (await store.admit("limited", "r5", 0, 60_000)).status == OVER_RPM
            finally:
                await other.close()

        with_degraded_store(server.url, body)
    finally:
        server.close()
